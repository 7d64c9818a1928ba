"""`speechlm features dump`: frame features of a manifest for k-means, one shard at a time.

    speechlm features dump TSV_DIR SPLIT FEAT_DIR [--nshard N --rank R]                 # 39-d MFCC
    speechlm features dump TSV_DIR SPLIT FEAT_DIR --checkpoint CKPT --layer 6 [...]    # hubert/speechlm

writes ``FEAT_DIR/{SPLIT}_{R}_{N}.npy`` (frames x dim, float32) and ``.len`` (fairseq HuBERT layout),
50 Hz by default (one row per ``.km`` label frame).
"""
import os
import sys


def add_args(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("dump", help="dump MFCC or checkpoint-layer features of one shard")
    p.add_argument("tsv_dir", help="directory holding SPLIT.tsv")
    p.add_argument("split")
    p.add_argument("feat_dir")
    p.add_argument("--checkpoint", help="fairseq hubert or speechlm checkpoint (default: MFCC)")
    p.add_argument("--layer", type=int, help="Transformer layer to dump (1-based), with --checkpoint")
    p.add_argument("--rate", type=int, default=50, choices=(50, 100), help="MFCC frame rate (Hz)")
    p.add_argument("--device", default="cpu", help="torch device for --checkpoint")
    p.add_argument("--nshard", type=int, default=1)
    p.add_argument("--rank", type=int, default=0)


def run(args):
    from speechlm.data.manifest import num_frames_50hz, num_frames_100hz
    from speechlm.tokenizers import features as F

    manifest = os.path.join(args.tsv_dir, f"{args.split}.tsv")
    if not os.path.isfile(manifest):
        sys.exit(f"speechlm features: {manifest}: no such manifest")
    if args.checkpoint:
        if args.layer is None:
            sys.exit("speechlm features: --checkpoint needs --layer N (1-based Transformer layer)")
        extractor, expected, what = (F.CheckpointFeatureReader(args.checkpoint, args.layer, args.device),
                                     num_frames_50hz, f"{args.checkpoint} layer {args.layer}")
    else:
        def extractor(wav):
            return F.mfcc_39(wav, args.rate)

        expected = num_frames_50hz if args.rate == 50 else num_frames_100hz
        what = f"MFCC 39-d at {args.rate} Hz"
    from speechlm.tokenizers.shards import shard_lock, write_sidecar

    with shard_lock(os.path.join(args.feat_dir, f"{args.split}_{args.rank}_{args.nshard}")):
        prefix, frames = F.dump_features(manifest, args.feat_dir, args.split, extractor, args.nshard,
                                         args.rank, expected)
        write_sidecar(prefix, "features dump", args.rank, args.nshard,
                      {"manifest": manifest, "checkpoint": args.checkpoint or None},
                      {"layer": args.layer, "rate": None if args.checkpoint else args.rate})
    print(f"[features] {what}: {frames} frames -> {prefix}.npy/.len", file=sys.stderr)
    return 0
