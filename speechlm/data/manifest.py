"""Readers for fairseq audio manifests and their label files, shared by the CLI and the tasks.

A manifest ``{split}.tsv`` is fairseq's wav2vec/HuBERT format::

    /abs/path/of/the/audio
    relative/path.wav<TAB>num_samples
    ...

and every label file (``.wrd .ltr .phn .phn100 .km .spk``) has one line per manifest row, in order.
Errors name the file and the 1-based line number as a text editor shows it (the root line is line 1).
"""
import os
from typing import List, Tuple

import numpy as np

SAMPLE_RATE = 16000  # every speechlm model consumes 16 kHz mono
# fairseq's wav2vec2/HuBERT conv front end [(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2:
# receptive field 400 samples (25 ms), stride 5*2^6 = 320 samples (20 ms) -> 50 Hz frames.
FRAME_WINDOW_SAMPLES = 400
FRAME_SHIFT_SAMPLES = 320
# Kaldi-style fbank/MFCC (25 ms window, 10 ms shift, snip_edges=True) -> 100 Hz frames.
FRAME_WINDOW_SAMPLES_100HZ = 400
FRAME_SHIFT_SAMPLES_100HZ = 160

RESAMPLE_HINT = "resample with `sox in.wav -r 16000 -c 1 out.wav`"


def num_frames_50hz(n_samples: int) -> int:
    """Frames the conv front end produces for ``n_samples`` (0 if shorter than one window)."""
    if n_samples < FRAME_WINDOW_SAMPLES:
        return 0
    return (n_samples - FRAME_WINDOW_SAMPLES) // FRAME_SHIFT_SAMPLES + 1


def num_frames_100hz(n_samples: int) -> int:
    """Frames of a 25 ms / 10 ms Kaldi feature extractor with snip_edges (0 if too short)."""
    if n_samples < FRAME_WINDOW_SAMPLES_100HZ:
        return 0
    return (n_samples - FRAME_WINDOW_SAMPLES_100HZ) // FRAME_SHIFT_SAMPLES_100HZ + 1


def frame_centres_50hz(n_samples: int) -> np.ndarray:
    """Centre of each 50 Hz frame in seconds, shape (num_frames_50hz(n_samples),)."""
    idx = np.arange(num_frames_50hz(n_samples))
    return (idx * FRAME_SHIFT_SAMPLES + FRAME_WINDOW_SAMPLES / 2) / SAMPLE_RATE


def frame_centres_100hz(n_samples: int) -> np.ndarray:
    """Centre of each 100 Hz frame in seconds, shape (num_frames_100hz(n_samples),)."""
    idx = np.arange(num_frames_100hz(n_samples))
    return (idx * FRAME_SHIFT_SAMPLES_100HZ + FRAME_WINDOW_SAMPLES_100HZ / 2) / SAMPLE_RATE


def load_manifest(tsv_path: str) -> Tuple[str, List[Tuple[str, int]]]:
    """Read a fairseq manifest.

    Returns ``(root, rows)`` with ``rows`` a list of ``(relative_path, num_samples)``.
    Raises ``ValueError`` naming the file and line for an empty file or a malformed row.
    """
    tsv_path = str(tsv_path)
    with open(tsv_path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].strip():
        raise ValueError(
            f"{tsv_path}:1: empty manifest; the first line must be the root directory of the audio"
        )
    root = lines[0].strip()
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0]:
            raise ValueError(
                f"{tsv_path}:{lineno}: malformed manifest row {line!r}; expected "
                "'relative/path.wav<TAB>num_samples' (tab-separated)"
            )
        try:
            n = int(parts[1])
        except ValueError:
            raise ValueError(
                f"{tsv_path}:{lineno}: sample count {parts[1]!r} is not an integer; expected "
                "'relative/path.wav<TAB>num_samples'"
            ) from None
        if n < 0:
            raise ValueError(f"{tsv_path}:{lineno}: negative sample count {n}")
        rows.append((parts[0], n))
    return root, rows


def load_labels(path: str, num_rows: int, manifest_path: str = None) -> List[str]:
    """Read a label file with one line per manifest row (no trailing newline kept).

    Raises ``ValueError`` naming both files and both counts when the line count is not ``num_rows``.
    """
    path = str(path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if len(lines) != num_rows:
        against = f"manifest {manifest_path}" if manifest_path else "the manifest"
        raise ValueError(
            f"{path}: has {len(lines)} lines but {against} has {num_rows} rows; a label file needs "
            "exactly one line per manifest row (regenerate it from the same manifest)"
        )
    return lines


def read_audio(path: str, expected_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a mono audio file as float32 in [-1, 1], shape (num_samples,).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an unreadable file,
    a wrong sample rate or more than one channel, each naming the file and what to do.
    """
    import soundfile as sf

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: audio file not found (check the manifest's root line)")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for corrupt files
        raise ValueError(f"{path}: cannot read audio ({e}); re-create or remove the file") from None
    if sr != expected_sr:
        raise ValueError(
            f"{path}: is {sr} Hz; speechlm expects {expected_sr} Hz mono: {RESAMPLE_HINT}"
        )
    if wav.shape[1] != 1:
        raise ValueError(
            f"{path}: has {wav.shape[1]} channels; speechlm expects {expected_sr} Hz mono: "
            f"{RESAMPLE_HINT}"
        )
    return wav[:, 0]


def audio_info(path: str) -> Tuple[int, int, int]:
    """``(sample_rate, channels, num_samples)`` of an audio file, without decoding it.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file, like ``read_audio``.
    """
    import soundfile as sf

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: audio file not found")
    try:
        info = sf.info(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot read audio ({e}); re-create or remove the file") from None
    return info.samplerate, info.channels, info.frames


def write_manifest(tsv_path: str, root: str, rows) -> None:
    """Write ``rows`` (iterable of ``(relative_path, num_samples)``) under ``root``."""
    with open(tsv_path, "w", encoding="utf-8") as f:
        f.write(os.path.abspath(root) + "\n")
        for rel, n in rows:
            f.write(f"{rel}\t{n}\n")
