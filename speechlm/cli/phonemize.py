"""`speechlm phonemize INPUT --out-prefix P`: text -> upsampled phoneme units ``P.phn`` + letters ``P.ltr``.

Sharded (one Slurm array task per shard), then merged::

    speechlm phonemize lm.txt --out-prefix out/lm --nshard 32 --rank $SLURM_ARRAY_TASK_ID
    speechlm phonemize --merge --out-prefix out/lm --nshard 32

Same seed -> byte-identical ``P.phn``/``P.ltr`` whatever the number of shards.

``--inventory kaldi`` writes Kaldi position-dependent phones (``AH0_B``, ``T_E``, ``A_S``...; stress kept,
``SIL`` bare between words, unknown words ``SPN_S``) as the released SpeechLM-P models use, from a
LibriSpeech/Kaldi ``--lexicon`` (default: the CMU dict with stress), and writes that inventory's
``dict.phn.txt`` (``SYMBOL INDEX`` lines, the released file's 364 symbols) next to ``P``.
"""
import os
import sys

from speechlm.tokenizers.phonemizer import (
    DEFAULT_SIL_PROB,
    Phonemizer,
    merge_shards,
    phonemize_file,
)
from speechlm.tokenizers.upsample import PHONE_DURATION, SIL_DURATION, UNK_DURATION


def add_args(parser):
    parser.add_argument("input", nargs="?", help="UTF-8 text, one sentence per line")
    parser.add_argument("--out-prefix", required=True, help="writes PREFIX.phn, PREFIX.ltr, PREFIX.stats.json")
    parser.add_argument("--lexicon", help="LibriSpeech/Kaldi lexicon 'WORD PH1 PH2 ...' (default: CMU dict)")
    parser.add_argument("--inventory", choices=("arpabet", "kaldi"), default="arpabet",
                        help="arpabet: 39 phones + SIL, stress removed (default); kaldi: position-dependent "
                             "phones with stress (the released SpeechLM-P dict.phn.txt, written next to PREFIX)")
    parser.add_argument("--sil-prob", type=float, default=DEFAULT_SIL_PROB, help="SIL between two words")
    parser.add_argument("--seed", type=int, default=1, help="random seed (output is a function of it)")
    parser.add_argument("--max-len", type=int, default=None, help="drop lines longer than this (frames)")
    for name, (m, s) in (("phone", PHONE_DURATION), ("sil", SIL_DURATION), ("unk", UNK_DURATION)):
        parser.add_argument(f"--{name}-duration", type=float, nargs=2, default=(m, s),
                            metavar=("MEAN", "STD"), help=f"repeat count of {name} units (default {m} {s})")
    parser.add_argument("--duration-table", help="per-unit overrides, lines 'UNIT MEAN STD'")
    parser.add_argument("--nshard", type=int, default=1, help="number of shards")
    parser.add_argument("--rank", type=int, default=0, help="this shard (0-based)")
    parser.add_argument("--merge", action="store_true", help="concatenate the finished shards")


def run(args):
    if args.merge:
        stats = merge_shards(args.out_prefix, args.nshard)
        print(f"[phonemize] merged {args.nshard} shards -> {args.out_prefix}.phn/.ltr", file=sys.stderr)
        print(stats.report(), file=sys.stderr)
        return 0
    if args.input is None:
        sys.exit("speechlm phonemize: give INPUT (a text file), or --merge to merge finished shards")
    if not os.path.isfile(args.input):
        sys.exit(f"speechlm phonemize: {args.input}: no such file")
    from speechlm.tokenizers.lexicon import Lexicon
    from speechlm.tokenizers.upsample import DurationTable

    lexicon = Lexicon.load(args.lexicon, args.inventory)
    kw = dict(phone=tuple(args.phone_duration), sil=tuple(args.sil_duration), unk=tuple(args.unk_duration),
              units=lexicon.inventory.units)
    table = DurationTable.from_file(args.duration_table, **kw) if args.duration_table else DurationTable.default(**kw)
    phonemizer = Phonemizer(lexicon, table, args.sil_prob, args.max_len)
    if args.inventory == "kaldi":
        _write_kaldi_dict(args.out_prefix)
    from speechlm.tokenizers.phonemizer import shard_prefix
    from speechlm.tokenizers.shards import shard_lock, write_sidecar

    with shard_lock(shard_prefix(args.out_prefix, args.rank, args.nshard)):
        stats = phonemize_file(args.input, args.out_prefix, phonemizer, args.seed, args.nshard, args.rank)
        if args.nshard > 1:
            write_sidecar(shard_prefix(args.out_prefix, args.rank, args.nshard), "phonemize", args.rank, args.nshard,
                          {"input": args.input, "lexicon": args.lexicon, "duration_table": args.duration_table},
                          {"inventory": args.inventory, "sil_prob": args.sil_prob, "seed": args.seed,
                           "max_len": args.max_len, "phone_duration": list(args.phone_duration),
                           "sil_duration": list(args.sil_duration), "unk_duration": list(args.unk_duration)})
    print(f"[phonemize] {args.input} shard {args.rank}/{args.nshard} (lexicon {phonemizer.lexicon.source})",
          file=sys.stderr)
    print(stats.report(), file=sys.stderr)
    return 0


def _write_kaldi_dict(out_prefix):
    """``dict.phn.txt`` of the Kaldi inventory next to the outputs; an existing different one is an error."""
    from speechlm.tokenizers.lexicon import KALDI_SYMBOLS, LexiconError, ensure_kaldi_dict

    try:
        path = ensure_kaldi_dict(os.path.dirname(os.path.abspath(out_prefix)))
    except LexiconError as e:
        sys.exit(f"speechlm phonemize: {e}")
    if path:
        print(f"[phonemize] wrote the Kaldi inventory ({len(KALDI_SYMBOLS)} symbols) to {path}", file=sys.stderr)
