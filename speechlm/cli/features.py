"""`speechlm features dump`: frame features of a manifest for k-means, one shard at a time.

    speechlm features dump TSV_DIR SPLIT FEAT_DIR [--nshard N --rank R]                 # 39-d MFCC
    speechlm features dump TSV_DIR SPLIT FEAT_DIR --checkpoint CKPT --layer 6 [...]    # hubert/speechlm
    speechlm features dump TSV_DIR SPLIT FEAT_DIR --checkpoint CKPT --layer all [...]  # speechlm, every layer
    speechlm features check FEAT_DIR [--checkpoint CKPT --layer 6]                     # before a recipe's steps

writes ``FEAT_DIR/{SPLIT}_{R}_{N}.npy`` (frames x dim, float32) and ``.len`` (fairseq HuBERT layout),
50 Hz by default (one row per ``.km`` label frame). ``--layer N`` is ``extract_features(output_layer=N)``,
with the published semantics (N > L/2: the final output); ``--layer all`` writes the output of every
layer k = 1..L (its ``layer_results`` entries, before any final norm) to ``FEAT_DIR/layer{k}/``.
A FEAT_DIR that already holds features of another kind (MFCC vs a checkpoint's layer, another checkpoint or
layer: their ``.shard.json`` sidecars say) is refused by both actions: ``check`` lets a recipe that skips
existing dumps refuse it before its first step.
"""
import argparse
import os
import sys


def _layer(value: str):
    if value == "all":
        return value
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--layer {value!r}: a layer number (1-based) or 'all'") from None


def add_args(parser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p = sub.add_parser("dump", help="dump MFCC or checkpoint-layer features of one shard")
    p.add_argument("tsv_dir", help="directory holding SPLIT.tsv")
    p.add_argument("split")
    p.add_argument("feat_dir")
    p.add_argument("--checkpoint", help="fairseq hubert or speechlm checkpoint (default: MFCC)")
    p.add_argument("--layer", type=_layer, help="Transformer layer to dump (1-based; beyond L/2: the final output, "
                   "as the published extract_features) or 'all' (every layer into FEAT_DIR/layer{k}), with --checkpoint")
    p.add_argument("--rate", type=int, default=50, choices=(50, 100), help="MFCC frame rate (Hz)")
    p.add_argument("--device", default="cpu", help="torch device for --checkpoint")
    half = p.add_mutually_exclusive_group()
    half.add_argument("--fp16", action="store_true", help="run the --checkpoint model in float16 (a GPU)")
    half.add_argument("--bf16", action="store_true", help="run the --checkpoint model in bfloat16")
    p.add_argument("--nshard", type=int, default=1)
    p.add_argument("--rank", type=int, default=0)
    p = sub.add_parser("check", help="refuse a FEAT_DIR holding other features than these (exit 1)")
    p.add_argument("feat_dir")
    p.add_argument("--checkpoint", help="the checkpoint the features should come from (default: MFCC)")
    p.add_argument("--layer", type=_layer, help="its Transformer layer (1-based) or 'all', with --checkpoint")
    p.add_argument("--rate", type=int, default=50, choices=(50, 100), help="MFCC frame rate (Hz)")


def run(args):
    from speechlm.data.manifest import num_frames_50hz, num_frames_100hz
    from speechlm.tokenizers import features

    if args.checkpoint and args.layer is None:
        sys.exit("speechlm features: --checkpoint needs --layer N (1-based Transformer layer) or --layer all")
    features.check_feature_dir(args.feat_dir, args.checkpoint, args.layer, args.rate)
    if args.action == "check":
        return 0
    manifest = os.path.join(args.tsv_dir, f"{args.split}.tsv")
    if not os.path.isfile(manifest):
        sys.exit(f"speechlm features: {manifest}: no such manifest")
    if args.checkpoint:
        extractor, expected, what = (features.CheckpointFeatureReader(args.checkpoint, args.layer, args.device,
                                                                        "fp16" if args.fp16 else "bf16" if args.bf16
                                                                        else None),
                                     num_frames_50hz, f"{args.checkpoint} layer {args.layer}")
    else:
        def extractor(wav):
            return features.mfcc_39(wav, args.rate)

        expected = num_frames_50hz if args.rate == 50 else num_frames_100hz
        what = f"MFCC 39-d at {args.rate} Hz"
    from speechlm.tokenizers.shards import shard_lock, write_sidecar

    with shard_lock(os.path.join(args.feat_dir, f"{args.split}_{args.rank}_{args.nshard}")):
        prefix, frames = features.dump_features(manifest, args.feat_dir, args.split, extractor, args.nshard,
                                         args.rank, expected)
        if args.layer == "all":  # FEAT_DIR/layer{k}/SPLIT_R_N for every layer the dump wrote
            name = os.path.basename(prefix)
            n = len(extractor.model.speech_encoder.layers) + len(extractor.model.shared_encoder.layers)
            layers = [(k, os.path.join(args.feat_dir, f"layer{k}", name)) for k in range(1, n + 1)]
        else:
            layers = [(args.layer, prefix)]
        for layer, p in layers:
            write_sidecar(p, "features dump", args.rank, args.nshard,
                          {"manifest": manifest, "checkpoint": args.checkpoint or None},
                          {"layer": layer, "rate": None if args.checkpoint else args.rate})
    where = f"{args.feat_dir}/layer1..{len(layers)}/" if args.layer == "all" else f"{prefix}.npy/.len"
    print(f"[features] {what}: {frames} frames -> {where}", file=sys.stderr)
    return 0
