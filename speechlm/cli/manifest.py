"""`speechlm manifest ROOT --dest DIR`: fairseq/wav2vec-style manifests (train.tsv, valid.tsv) for a
folder of your own 16 kHz mono audio, found recursively."""
import os
import sys


def add_args(parser):
    parser.add_argument("root", metavar="ROOT", help="folder searched recursively for audio files")
    parser.add_argument("--dest", required=True, help="where to write train.tsv and valid.tsv")
    parser.add_argument("--ext", default="wav", choices=("wav", "flac"), help="audio extension (default: wav)")
    parser.add_argument("--valid-percent", type=float, default=0.01,
                        help="fraction of files (0..1) held out into valid.tsv (default: 0.01, as "
                        "fairseq's wav2vec_manifest.py)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the train/valid split (default: 42)")


def run(args):
    from speechlm.data.scan import write_manifests

    errors, counts = write_manifests(args.root, args.dest, args.ext, args.valid_percent, args.seed)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        print(f"speechlm manifest: {len(errors)} unreadable or unusable file(s); nothing written. "
              "Fix or remove them and run again.", file=sys.stderr)
        return 1
    print(f"wrote {os.path.join(args.dest, 'train.tsv')} ({counts['train']} files)"
          + (f" and valid.tsv ({counts['valid']} files)" if args.valid_percent > 0 else ""))
    return 0
