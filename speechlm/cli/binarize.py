"""`speechlm binarize`: upsampled units + letters -> fairseq mmap indexed datasets for `speechlm_pretraining`.

    speechlm binarize --units P.phn --letters P.ltr --unit-dict corpus/dict.phn.txt \\
        --letter-dict corpus/dict.ltr.txt --dest TEXT_DIR --split train [--workers N]

writes ``TEXT_DIR/{split}.{unit}-ltr.{unit}.{bin,idx}`` and ``.ltr.{bin,idx}``, the two dictionaries and
``{split}.{unit}-ltr.summary.json`` as one unit (a killed run leaves the previous files or nothing; see
``speechlm.tokenizers.binarize``, the Python API). A symbol outside its dictionary is an error naming the
file and line (the phonemizer's unknown-word unit ``SPN`` is ``<unk>`` by design); ``--allow-unk`` maps
every such symbol to ``<unk>`` and counts it.
"""
import os
import sys


def add_args(parser):
    parser.add_argument("--units", required=True, help="upsampled unit lines (.phn from phonemize, .km from t2u)")
    parser.add_argument("--letters", required=True, help="letter lines (.ltr), line-aligned with --units")
    parser.add_argument("--unit-dict", required=True, help="the speech side's dict.phn.txt or dict.km.txt")
    parser.add_argument("--letter-dict", required=True, help="dict.ltr.txt")
    parser.add_argument("--dest", required=True, help="output directory (TEXT_DIR)")
    parser.add_argument("--split", default="train", help="split name of the outputs")
    parser.add_argument("--workers", type=int, default=1, help="processes for binarizing")
    parser.add_argument("--allow-unk", action="store_true",
                        help="map symbols outside the dictionaries to <unk> (counted) instead of refusing them")


def run(args):
    from speechlm.errors import UserFileNotFoundError

    for p in (args.units, args.letters, args.unit_dict, args.letter_dict):
        if not os.path.isfile(p):
            raise UserFileNotFoundError(f"{p}: no such file")
    from speechlm.tokenizers.binarize import binarize

    s = binarize(args.units, args.letters, args.unit_dict, args.letter_dict, args.dest, args.split, args.workers,
                 allow_unk=args.allow_unk)
    for kind in ("units", "letters"):
        k = s[kind]
        pct = 100.0 * k["replaced_by_unk"] / max(1, k["tokens"])
        print(f"[binarize] {kind}: {s['lines']} lines, {k['tokens']} tokens, "
              f"{k['replaced_by_unk']} -> <unk> ({pct:.2f}%) {k['replaced']}", file=sys.stderr)
    print(f"[binarize] wrote {args.dest}/{args.split}.{s['unit']}-ltr.*", file=sys.stderr)
    return 0
