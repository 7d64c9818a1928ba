"""The audio conventions every manifest follows: 16 kHz mono, frame rates and counts, and the writer.

A manifest ``{split}.tsv`` is fairseq's wav2vec/HuBERT format (first line the audio root, then
``relative/path.wav<TAB>num_samples``); it is read by ``speechlm.data.readers``, and a directory of audio
is scanned into manifests by ``speechlm.data.scan``.
"""
import os

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


def write_manifest(tsv_path: str, root: str, rows) -> None:
    """Write ``rows`` (iterable of ``(relative_path, num_samples)``) under ``root``."""
    from speechlm.atomic import atomic_write

    with atomic_write(tsv_path, what="manifest") as f:
        f.write(os.path.abspath(root) + "\n")
        for rel, n in rows:
            f.write(f"{rel}\t{n}\n")
