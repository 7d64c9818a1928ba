"""Manifests of a directory of audio (``speechlm manifest``): every file's header checked, a seeded valid split.

The scanner reads audio headers (:func:`speechlm.data.readers.audio_file_errors`) and writes with
:func:`speechlm.data.manifest.write_manifest`; it sits above both, so that the audio conventions
(``data/manifest.py``) need nothing of the readers.
"""
import glob
import os

import numpy as np

from speechlm.data.manifest import write_manifest
from speechlm.data.readers import audio_file_errors


def write_manifests(root, dest, ext="wav", valid_percent=0.01, seed=42):
    """Scan ``root`` for ``*.{ext}`` (recursively) and write ``dest/{train,valid}.tsv`` (a seeded
    ``valid_percent`` of the files in valid, as fairseq's ``wav2vec_manifest.py``).

    Returns ``(errors, counts)``; on any error nothing is written, so no partial manifest is left.
    """
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
        n, problems = audio_file_errors(path)
        errors.extend(problems)
        if not problems:
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
