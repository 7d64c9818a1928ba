"""`speechlm t2u generate|merge`: unpaired text -> hidden units with a trained ``text_to_unit`` model.

    speechlm phonemize lm.txt --out-prefix out/lm                        # out/lm.phn, out/lm.ltr
    speechlm t2u generate --checkpoint EXP/checkpoint_best.pt --units out/lm.phn --letters out/lm.ltr \\
        --out-prefix out/lm_km [--nshard N --rank R]                    # out/lm_km.km, out/lm_km.ltr
    speechlm t2u merge --out-prefix out/lm_km --nshard N
    speechlm binarize --units out/lm_km.km --letters out/lm_km.ltr --unit-dict LAB/dict.km.txt ...

Each ``.km`` line has one unit per 50 Hz frame of the input's upsampled phone line: the durations the
phonemizer sampled are kept (``--predicted-durations`` uses the model's duration predictor instead).
Greedy (argmax) decoding: deterministic, so 1 shard and N shards merged give identical files.
"""
import logging
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


GENERATE_CHUNK_LINES = 10000  # lines read, sorted by length and batched at a time


def generate(model, task, phone_lines, max_frames=20000, predicted=False, device="cpu"):
    """Unit strings for each phone line, in input order."""
    import torch

    ds = task.build_inference_dataset(phone_lines)
    order = sorted(range(len(ds)), key=lambda i: (ds.sizes[i], i))
    results = [None] * len(ds)
    unit_dict = task.target_dictionary
    batch, frames = [], 0
    batches = []
    for i in order:
        if batch and (len(batch) + 1) * max(frames, ds.sizes[i]) > max_frames:
            batches.append(batch)
            batch, frames = [], 0
        batch.append(i)
        frames = max(frames, ds.sizes[i])
    if batch:
        batches.append(batch)
    for b in batches:
        s = ds.collater([ds[i] for i in b])
        net = {k: v.to(device) for k, v in s["net_input"].items()}
        outs = model.generate(net["src_tokens"], net["src_lengths"], None if predicted else net["durations"])
        for i, u in zip(b, outs):
            results[i] = " ".join(unit_dict[int(x)] for x in u.tolist())
    return results


def _merge(prefix, nshard):
    try:
        concat_shards(prefix, nshard, ("km", "ltr"), "run `speechlm t2u generate` for those ranks")
    except FileNotFoundError as e:
        sys.exit(f"speechlm t2u merge: {e}")


def run(args):
    logging.basicConfig(level=logging.INFO, format="[t2u] %(message)s")
    if args.action == "merge":
        _merge(args.out_prefix, args.nshard)
        print(f"[t2u] merged {args.nshard} shards -> {args.out_prefix}.km/.ltr", file=sys.stderr)
        return 0
    import torch
    from fairseq import checkpoint_utils

    import speechlm  # noqa: F401  (registers text_to_unit; safe checkpoint loading)
    from speechlm.tokenizers.shards import shard_range

    from speechlm.tokenizers.phonemizer import count_lines

    n_phones, n_letters = count_lines(args.units), count_lines(args.letters)
    if n_phones != n_letters:
        sys.exit(f"speechlm t2u generate: {args.units} has {n_phones} lines but {args.letters} has "
                 f"{n_letters}; they must be line-aligned (write both with one phonemize run)")
    overrides = {"data": os.path.abspath(args.data)} if args.data else {}
    models, _, task = checkpoint_utils.load_model_ensemble_and_task([args.checkpoint], arg_overrides=overrides)
    model = models[0].eval().to(args.device)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    start, end = shard_range(n_phones, args.nshard, args.rank)
    prefix = args.out_prefix if args.nshard == 1 else f"{args.out_prefix}_{args.rank}_{args.nshard}"
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    phone_dict = task.source_dictionary
    n_lines = n_unk_lines = 0
    with open(args.units, encoding="utf-8") as fin_p, open(args.letters, encoding="utf-8") as fin_l, \
            open(prefix + ".km.tmp", "w", encoding="utf-8") as fk, open(prefix + ".ltr.tmp", "w", encoding="utf-8") as fl:
        chunk_p, chunk_l = [], []

        def flush():
            for u, ltr in zip(generate(model, task, chunk_p, args.max_frames, args.predicted_durations, args.device),
                              chunk_l):
                fk.write(u + "\n")
                fl.write(ltr + "\n")
            chunk_p.clear()
            chunk_l.clear()

        for i, (p, l) in enumerate(zip(fin_p, fin_l)):  # streamed: a shard of a 40M-line file never sits in RAM
            if i < start:
                continue
            if i >= end:
                break
            p = p.rstrip("\n")
            chunk_p.append(p)
            chunk_l.append(l.rstrip("\n"))
            n_lines += 1
            n_unk_lines += any(phone_dict.index(x) == phone_dict.unk() for x in set(p.split()))
            if len(chunk_p) == GENERATE_CHUNK_LINES:
                flush()
        flush()
    os.replace(prefix + ".km.tmp", prefix + ".km")
    os.replace(prefix + ".ltr.tmp", prefix + ".ltr")
    print(f"[t2u] {n_lines} lines -> {prefix}.km/.ltr ({n_unk_lines} lines hold a phone outside "
          f"dict.{task.cfg.phone_label}.txt, read as {phone_dict.unk_word}, e.g. the phonemizer's SPN)", file=sys.stderr)
    return 0
