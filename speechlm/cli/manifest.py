"""`speechlm manifest ROOT --dest DIR`: fairseq/wav2vec-style manifests (train.tsv, valid.tsv) for a
folder of your own 16 kHz mono audio, found recursively."""
import glob
import os
import sys

import numpy as np


def add_args(parser):
    parser.add_argument("root", metavar="ROOT", help="folder searched recursively for audio files")
    parser.add_argument("--dest", required=True, help="where to write train.tsv and valid.tsv")
    parser.add_argument("--ext", default="wav", choices=("wav", "flac"), help="audio extension (default: wav)")
    parser.add_argument("--valid-percent", type=float, default=0.01,
                        help="fraction of files (0..1) held out into valid.tsv (default: 0.01, as "
                        "fairseq's wav2vec_manifest.py)")
    parser.add_argument("--seed", type=int, default=42, help="seed of the train/valid split (default: 42)")


def write_manifests(root, dest, ext="wav", valid_percent=0.01, seed=42):
    """Scan ``root`` and write ``dest/{train,valid}.tsv``.

    Returns ``(errors, counts)``; on any error nothing is written, so no partial manifest is left.
    """
    from speechlm.data.manifest import RESAMPLE_HINT, SAMPLE_RATE, write_manifest
    from speechlm.data.readers import audio_info

    root = os.path.abspath(root)
    if not os.path.isdir(root):
        return [f"{root}: not a directory"], {}
    if not 0 <= valid_percent <= 1:
        return [f"--valid-percent {valid_percent} must be between 0 and 1"], {}
    files = sorted(glob.glob(os.path.join(root, "**", f"*.{ext}"), recursive=True))
    if not files:
        return [f"{root}: no *.{ext} files found (try --ext flac?)"], {}
    rows, errors = [], []
    for path in files:
        try:
            sr, ch, n = audio_info(path)
        except (FileNotFoundError, ValueError) as e:
            errors.append(f"{e}")
            continue
        if sr != SAMPLE_RATE or ch != 1:
            errors.append(f"{path}: is {sr} Hz with {ch} channel(s); speechlm expects "
                          f"{SAMPLE_RATE} Hz mono: {RESAMPLE_HINT}")
            continue
        rows.append((os.path.relpath(path, root), n))
    if errors:
        return errors, {}
    rng = np.random.default_rng(seed)
    is_valid = rng.random(len(rows)) < valid_percent
    train = [r for r, v in zip(rows, is_valid) if not v]
    valid = [r for r, v in zip(rows, is_valid) if v]
    os.makedirs(dest, exist_ok=True)
    write_manifest(os.path.join(dest, "train.tsv"), root, train)
    if valid_percent > 0:
        write_manifest(os.path.join(dest, "valid.tsv"), root, valid)
    return [], {"train": len(train), "valid": len(valid)}


def run(args):
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
