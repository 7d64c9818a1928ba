"""`speechlm t2u generate|merge`: unpaired text -> hidden units with a trained ``text_to_unit`` model.

    speechlm phonemize lm.txt --out-prefix out/lm                        # out/lm.phn, out/lm.ltr
    speechlm t2u generate --checkpoint EXP/checkpoint_best.pt --units out/lm.phn --letters out/lm.ltr \\
        --out-prefix out/lm_km [--nshard N --rank R]                    # out/lm_km.km, out/lm_km.ltr
    speechlm t2u merge --out-prefix out/lm_km --nshard N
    speechlm binarize --units out/lm_km.km --letters out/lm_km.ltr --unit-dict LAB/dict.km.txt ...

Each ``.km`` line has one unit per 50 Hz frame of the input's upsampled phone line: the durations the
phonemizer sampled are kept (``--predicted-durations`` uses the model's duration predictor instead).
Greedy (argmax) decoding: deterministic, so 1 shard and N shards merged give identical files.
The work is in ``speechlm.tokenizers.text_to_unit`` (the Python API).
"""
import os
import sys

from speechlm.tokenizers.shards import concat_shards


def add_args(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("generate", help="upsampled phones (+ letters) -> hidden units (+ letters)")
    p.add_argument("--checkpoint", required=True, help="text_to_unit checkpoint (fairseq-hydra-train)")
    p.add_argument("--units", required=True, help="upsampled phone lines (speechlm phonemize)")
    p.add_argument("--letters", required=True, help="the matching .ltr lines")
    p.add_argument("--out-prefix", required=True, help="writes PREFIX.km and PREFIX.ltr")
    p.add_argument("--data", help="directory with dict.phn.txt/dict.km.txt (default: the checkpoint's task.data)")
    p.add_argument("--predicted-durations", action="store_true", help="use the duration predictor")
    p.add_argument("--max-frames", type=int, default=20000, help="frames per batch")
    p.add_argument("--device", default="cpu")
    p.add_argument("--nshard", type=int, default=1)
    p.add_argument("--rank", type=int, default=0)

    p = sub.add_parser("merge", help="concatenate PREFIX_{r}_{N}.{km,ltr} into PREFIX.{km,ltr}")
    p.add_argument("--out-prefix", required=True)
    p.add_argument("--nshard", type=int, required=True)


def _merge(prefix, nshard):
    try:
        concat_shards(prefix, nshard, ("km", "ltr"), "run `speechlm t2u generate` for those ranks")
    except FileNotFoundError as e:
        sys.exit(f"speechlm t2u merge: {e}")


def run(args):
    if args.action == "merge":
        _merge(args.out_prefix, args.nshard)
        print(f"[t2u] merged {args.nshard} shards -> {args.out_prefix}.km/.ltr", file=sys.stderr)
        return 0
    import torch

    from speechlm.tokenizers.phonemizer import count_lines
    from speechlm.tokenizers.shards import shard_range
    from speechlm.tokenizers.text_to_unit import generate_file, load_model

    n_phones, n_letters = count_lines(args.units), count_lines(args.letters)
    if n_phones != n_letters:
        sys.exit(f"speechlm t2u generate: {args.units} has {n_phones} lines but {args.letters} has "
                 f"{n_letters}; they must be line-aligned (write both with one phonemize run)")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, task = load_model(args.checkpoint, args.data, args.device)
    start, end = shard_range(n_phones, args.nshard, args.rank)
    prefix = args.out_prefix if args.nshard == 1 else f"{args.out_prefix}_{args.rank}_{args.nshard}"
    from speechlm.tokenizers.shards import shard_lock, write_sidecar

    with shard_lock(prefix):
        n_lines, n_unk_lines = generate_file(model, task, args.units, args.letters, prefix, start, end,
                                             args.max_frames, args.predicted_durations, args.device)
        if args.nshard > 1:  # what `t2u merge` checks: the same input, model and options in every shard
            write_sidecar(prefix, "t2u generate", args.rank, args.nshard,
                          {"units": args.units, "letters": args.letters, "checkpoint": args.checkpoint},
                          {"predicted_durations": args.predicted_durations, "data": args.data})
    phone_dict = task.source_dictionary
    print(f"[t2u] {n_lines} lines -> {prefix}.km/.ltr ({n_unk_lines} lines hold a phone outside "
          f"dict.{task.cfg.phone_label}.txt, read as {phone_dict.unk_word}, e.g. the phonemizer's SPN)", file=sys.stderr)
    return 0
