"""`speechlm kmeans learn|apply|merge|score`: hidden units from dumped features.

    speechlm kmeans learn FEAT_DIR SPLIT --nshard N --km-path km.npy -k 500 --percent 0.1
    speechlm kmeans apply FEAT_DIR SPLIT --km-path km.npy --lab-dir LAB --nshard N --rank R
    speechlm kmeans merge LAB SPLIT --nshard N --km-path km.npy   # LAB/SPLIT.km + LAB/dict.km.txt
    speechlm kmeans score --units LAB/valid.km --phones corpus/valid.phn  # purity vs true phones

With ``--nshard 1`` apply writes ``LAB/SPLIT.km`` and ``LAB/dict.km.txt`` directly.
"""
import json
import logging
import os
import sys
from collections import Counter

from speechlm.tokenizers.shards import check_shards, shard_prefixes


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
    logging.basicConfig(level=logging.INFO, format="[kmeans] %(message)s")
    import numpy as np

    from speechlm.tokenizers import kmeans as K
    from speechlm.tokenizers.features import load_feature_shard

    if args.action == "learn":
        shards = [load_feature_shard(args.feat_dir, args.split, r, args.nshard)[0] for r in range(args.nshard)]
        feats = K.sample_frames(shards, args.percent, args.seed)
        try:
            C = K.learn_kmeans(feats, args.n_clusters, args.seed, args.batch_size, args.max_iter, args.n_init)
        except ValueError as e:
            sys.exit(f"speechlm kmeans learn: {e}")
        os.makedirs(os.path.dirname(os.path.abspath(args.km_path)), exist_ok=True)
        with open(args.km_path, "wb") as f:
            np.save(f, C)
        print(f"[kmeans] {args.n_clusters} centroids from {len(feats)} frames -> {args.km_path}", file=sys.stderr)
    elif args.action == "apply":
        applier = K.KMeansApplier(K.load_centroids(args.km_path))
        feats, lens = load_feature_shard(args.feat_dir, args.split, args.rank, args.nshard)
        labels = applier(feats)
        os.makedirs(args.lab_dir, exist_ok=True)
        name = args.split if args.nshard == 1 else f"{args.split}_{args.rank}_{args.nshard}"
        out = os.path.join(args.lab_dir, f"{name}.km")
        offsets = np.concatenate([[0], np.cumsum(lens)])
        with open(out + ".tmp", "w", encoding="utf-8") as f:
            for a, b in zip(offsets[:-1], offsets[1:]):
                f.write(" ".join(map(str, labels[a:b].tolist())) + "\n")
        os.replace(out + ".tmp", out)
        if args.nshard == 1:
            K.write_dict(os.path.join(args.lab_dir, "dict.km.txt"),
                         Counter(labels.tolist()), applier.n_clusters)
        print(f"[kmeans] {len(lens)} utterances, {len(labels)} frames -> {out}", file=sys.stderr)
    elif args.action == "merge":
        n_clusters = K.load_centroids(args.km_path).shape[0]
        counts = Counter()
        out = os.path.join(args.lab_dir, f"{args.split}.km")
        parts = [p + ".km" for p in shard_prefixes(os.path.join(args.lab_dir, args.split), args.nshard)]
        try:
            check_shards(parts, "run `speechlm kmeans apply` for those ranks")
        except FileNotFoundError as e:
            sys.exit(f"speechlm kmeans merge: {e}")
        with open(out + ".tmp", "w", encoding="utf-8") as fo:
            for p in parts:
                with open(p, encoding="utf-8") as f:
                    for line in f:
                        counts.update(int(x) for x in line.split())
                        fo.write(line)
        os.replace(out + ".tmp", out)
        K.write_dict(os.path.join(args.lab_dir, "dict.km.txt"), counts, n_clusters)
        print(f"[kmeans] merged {args.nshard} shards -> {out}, dict.km.txt", file=sys.stderr)
    elif args.action == "score":
        units = _read_label_lines(args.units)
        phones = _read_label_lines(args.phones)
        if len(units) != len(phones):
            sys.exit(f"speechlm kmeans score: {args.units} has {len(units)} lines but {args.phones} has "
                     f"{len(phones)}; both must have one line per row of the same manifest")
        try:
            res = K.purity([np.array([int(x) for x in u]) for u in units], phones)
        except ValueError as e:
            sys.exit(f"speechlm kmeans score: {args.units} vs {args.phones}: {e}")
        print(json.dumps(res))
    return 0
