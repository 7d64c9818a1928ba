"""`speechlm binarize`: upsampled units + letters -> fairseq mmap indexed datasets for `speechlm_pretraining`.

    speechlm binarize --units P.phn --letters P.ltr --unit-dict corpus/dict.phn.txt \\
        --letter-dict corpus/dict.ltr.txt --dest TEXT_DIR --split train [--workers N]

writes ``TEXT_DIR/{split}.{unit}-ltr.{unit}.{bin,idx}`` and ``TEXT_DIR/{split}.{unit}-ltr.ltr.{bin,idx}``
(unit = ``phn`` or ``km``, the unit dictionary's label name) and copies the two dictionaries to
``TEXT_DIR/dict.{unit}.txt`` and ``TEXT_DIR/dict.ltr.txt``. Encoding is fairseq-preprocess's own
(``FileBinarizer`` + ``VocabularyDatasetBinarizer``; ``</s>`` appended to every line), so the unit ids
agree with the speech side's labels read with the same dictionary. (Tokens are split on whitespace and
looked up directly, which gives the same ids as ``Dictionary.encode_line`` about 20x faster.) Symbols missing from a dictionary
(the phonemizer's ``SPN``) become ``<unk>``; they are counted and reported.
"""
import json
import os
import re
import shutil
import sys
from collections import Counter

import torch
from fairseq.binarizer import FileBinarizer, VocabularyDatasetBinarizer
from fairseq.data import Dictionary


def add_args(parser):
    parser.add_argument("--units", required=True, help="upsampled unit lines (.phn from phonemize, .km from t2u)")
    parser.add_argument("--letters", required=True, help="letter lines (.ltr), line-aligned with --units")
    parser.add_argument("--unit-dict", required=True, help="the speech side's dict.phn.txt or dict.km.txt")
    parser.add_argument("--letter-dict", required=True, help="dict.ltr.txt")
    parser.add_argument("--dest", required=True, help="output directory (TEXT_DIR)")
    parser.add_argument("--split", default="train", help="split name of the outputs")
    parser.add_argument("--workers", type=int, default=1, help="processes for binarizing")


def unit_name(dict_path: str) -> str:
    """``dict.phn.txt`` -> ``phn``; ``dict.km.txt`` -> ``km``."""
    m = re.fullmatch(r"dict\.([A-Za-z0-9_]+)\.txt", os.path.basename(dict_path))
    if not m:
        raise ValueError(
            f"{dict_path}: a unit dictionary must be named dict.<unit>.txt (dict.phn.txt or "
            "dict.km.txt); the <unit> part names the output files"
        )
    return m.group(1)


class FastVocabularyBinarizer(VocabularyDatasetBinarizer):
    """fairseq's ``VocabularyDatasetBinarizer`` with a whitespace split and one dict lookup per token
    (same ids, same ``</s>``, same replaced-word counts; ``Dictionary.encode_line`` is ~15x slower)."""

    def __init__(self, dictionary):
        super().__init__(dictionary, append_eos=True)

    def binarize_line(self, line, summary):
        if summary.replaced is None:
            summary.replaced = Counter()
        index, unk = self.dict.indices, self.dict.unk_index
        tokens = line.split()
        ids = [index.get(t, unk) for t in tokens]
        if unk in ids:
            summary.replaced.update(t for t, i in zip(tokens, ids) if i == unk and t != self.dict.unk_word)
        ids.append(self.dict.eos_index)
        summary.num_seq += 1
        summary.num_tok += len(ids)
        return torch.IntTensor(ids)


def _check_aligned(units: str, letters: str) -> int:
    from speechlm.tokenizers.phonemizer import count_lines

    nu, nl = count_lines(units), count_lines(letters)
    if nu != nl:
        raise ValueError(
            f"{units} has {nu} lines but {letters} has {nl}; the unit and letter files must be "
            "line-aligned (write both with the same phonemize / t2u generate run)"
        )
    return nu


def binarize(units, letters, unit_dict, letter_dict, dest, split="train", workers=1) -> dict:
    """Binarize a unit/letter pair; returns a summary dict (also written to ``dest``)."""
    unit = unit_name(unit_dict)
    n = _check_aligned(units, letters)
    os.makedirs(dest, exist_ok=True)
    summary = {"lines": n, "unit": unit}
    for kind, src, dict_path, sym in (("units", units, unit_dict, unit), ("letters", letters, letter_dict, "ltr")):
        d = Dictionary.load(dict_path)
        prefix = os.path.join(dest, f"{split}.{unit}-ltr.{sym}")
        s = FileBinarizer.multiprocess_dataset(
            src, "mmap", FastVocabularyBinarizer(d), prefix,
            vocab_size=len(d), num_workers=workers,
        )
        if s.num_seq != n:
            raise RuntimeError(f"{src}: binarized {s.num_seq} lines, expected {n}")
        summary[kind] = {
            "tokens": s.num_tok,
            "replaced_by_unk": s.num_replaced,
            "replaced": dict(s.replaced.most_common(20)) if s.replaced else {},
        }
        target = os.path.join(dest, f"dict.{sym}.txt")
        if not (os.path.exists(target) and os.path.samefile(dict_path, target)):
            shutil.copyfile(dict_path, target)
    with open(os.path.join(dest, f"{split}.{unit}-ltr.summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def run(args):
    for p in (args.units, args.letters, args.unit_dict, args.letter_dict):
        if not os.path.isfile(p):
            sys.exit(f"speechlm binarize: {p}: no such file")
    try:
        s = binarize(args.units, args.letters, args.unit_dict, args.letter_dict, args.dest,
                     args.split, args.workers)
    except ValueError as e:
        sys.exit(f"speechlm binarize: {e}")
    for kind in ("units", "letters"):
        k = s[kind]
        pct = 100.0 * k["replaced_by_unk"] / max(1, k["tokens"])
        print(f"[binarize] {kind}: {s['lines']} lines, {k['tokens']} tokens, "
              f"{k['replaced_by_unk']} -> <unk> ({pct:.2f}%) {k['replaced']}", file=sys.stderr)
    print(f"[binarize] wrote {args.dest}/{args.split}.{s['unit']}-ltr.*", file=sys.stderr)
    return 0
