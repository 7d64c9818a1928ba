"""`speechlm kmeans learn|apply|merge|score`: hidden units from dumped features.

    speechlm kmeans learn FEAT_DIR SPLIT --nshard N --km-path km.npy -k 500 --percent 0.1
    speechlm kmeans apply FEAT_DIR SPLIT --km-path km.npy --lab-dir LAB --nshard N --rank R
    speechlm kmeans merge LAB SPLIT --nshard N --km-path km.npy   # LAB/SPLIT.km + LAB/dict.km.txt
    speechlm kmeans score --units LAB/valid.km --phones corpus/valid.phn  # purity vs true phones

With ``--nshard 1`` apply writes ``LAB/SPLIT.km`` and ``LAB/dict.km.txt`` directly.
"""
import json
import os
import sys


def add_args(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("learn", help="MiniBatchKMeans on a sample of the dumped features")
    p.add_argument("feat_dir")
    p.add_argument("split")
    p.add_argument("--km-path", required=True, help="output centroids (.npy)")
    p.add_argument("--nshard", type=int, default=1, help="number of feature shards to read")
    p.add_argument("-k", "--n-clusters", type=int, default=500)
    p.add_argument("--percent", type=float, default=0.1, help="fraction of frames to sample (0, 1]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=10000)
    p.add_argument("--max-iter", type=int, default=100)
    p.add_argument("--n-init", type=int, default=20)

    p = sub.add_parser("apply", help="label one feature shard with the nearest centroid")
    p.add_argument("feat_dir")
    p.add_argument("split")
    p.add_argument("--km-path", required=True)
    p.add_argument("--lab-dir", required=True)
    p.add_argument("--nshard", type=int, default=1)
    p.add_argument("--rank", type=int, default=0)

    p = sub.add_parser("merge", help="concatenate the label shards; write dict.km.txt")
    p.add_argument("lab_dir")
    p.add_argument("split")
    p.add_argument("--nshard", type=int, required=True)
    p.add_argument("--km-path", required=True, help="the centroids (for K)")

    p = sub.add_parser("score", help="phone purity / cluster purity / PNMI against true 50 Hz phones")
    p.add_argument("--units", required=True, help=".km labels")
    p.add_argument("--phones", required=True, help="true frame-level .phn of the same manifest")


def _read_label_lines(path):
    from speechlm.data.readers import read_lines

    return [line.split() for line in read_lines(path)]


def run(args):
    import numpy as np

    from speechlm.tokenizers import kmeans

    if args.action == "learn":
        try:
            n = kmeans.learn_from_shards(args.feat_dir, args.split, args.nshard, args.km_path, args.n_clusters,
                                    args.percent, args.seed, batch_size=args.batch_size,
                                    max_iter=args.max_iter, n_init=args.n_init)
        except ValueError as e:
            sys.exit(f"speechlm kmeans learn: {e}")
        print(f"[kmeans] {args.n_clusters} centroids from {n} frames -> {args.km_path}", file=sys.stderr)
    elif args.action == "apply":
        from speechlm.tokenizers.shards import shard_lock

        name = args.split if args.nshard == 1 else f"{args.split}_{args.rank}_{args.nshard}"
        with shard_lock(os.path.join(args.lab_dir, name)):
            out, n_utts, n_frames = kmeans.apply_to_shard(args.feat_dir, args.split, args.km_path, args.lab_dir,
                                                     args.nshard, args.rank)
        print(f"[kmeans] {n_utts} utterances, {n_frames} frames -> {out}", file=sys.stderr)
    elif args.action == "merge":
        try:
            out = kmeans.merge_label_shards(args.lab_dir, args.split, args.nshard, args.km_path)
        except FileNotFoundError as e:
            sys.exit(f"speechlm kmeans merge: {e}")
        print(f"[kmeans] merged {args.nshard} shards -> {out}, dict.km.txt", file=sys.stderr)
    elif args.action == "score":
        units = _read_label_lines(args.units)
        phones = _read_label_lines(args.phones)
        if len(units) != len(phones):
            sys.exit(f"speechlm kmeans score: {args.units} has {len(units)} lines but {args.phones} has "
                     f"{len(phones)}; both must have one line per row of the same manifest")
        try:
            res = kmeans.purity([np.array([int(x) for x in u]) for u in units], phones)
        except ValueError as e:
            sys.exit(f"speechlm kmeans score: {args.units} vs {args.phones}: {e}")
        print(json.dumps(res))
    return 0
