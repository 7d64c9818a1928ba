"""80-d log-Mel filterbank features (25 ms / 10 ms) with per-speaker mean/variance normalisation.

SPLAT's speech module reads Kaldi-compatible fbank computed with ``kaldi-native-fbank``. Features are
computed once per split by ``speechlm splat features DIR`` and stored next to the manifest:

- ``{split}.fbank.npy``: float32 (total_frames, 80), the utterances' raw log-Mel frames one after another;
- ``{split}.fbank.len``: one line per manifest row, the number of frames of that row;
- ``cmvn.npz``: per-speaker statistics (``speakers``, ``mean`` (S, 80), ``std`` (S, 80), ``frames`` (S,)),
  computed ONCE per speaker over every split given to the command; the speaker of a row is named by
  ``{split}.spk``. Datasets normalise on the fly with these statistics, so a speaker's statistics are
  the same in every split.
"""
import os
from typing import Dict, Iterable, List, Tuple

import numpy as np

from speechlm.data.manifest import SAMPLE_RATE, num_frames_100hz
from speechlm.data.readers import Manifest, load_labels, load_manifest

NUM_MEL_BINS = 80
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
CMVN_FILE = "cmvn.npz"
STD_FLOOR = 1e-5  # a constant channel (digital silence) must not divide by zero


def compute_fbank(wav: np.ndarray, num_mel_bins: int = NUM_MEL_BINS) -> np.ndarray:
    """Log-Mel fbank of a float waveform in [-1, 1] at 16 kHz -> float32 (num_frames_100hz(n), bins).

    Kaldi conventions (snip_edges, povey window, pre-emphasis 0.97) on int16-scaled samples; dither is
    off so features are deterministic.
    """
    import kaldi_native_fbank as knf

    opts = knf.FbankOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.frame_length_ms = FRAME_LENGTH_MS
    opts.frame_opts.frame_shift_ms = FRAME_SHIFT_MS
    opts.frame_opts.dither = 0.0
    opts.frame_opts.snip_edges = True
    opts.mel_opts.num_bins = num_mel_bins
    fb = knf.OnlineFbank(opts)
    fb.accept_waveform(SAMPLE_RATE, (np.asarray(wav, dtype=np.float32) * 32768.0).tolist())
    fb.input_finished()
    n = fb.num_frames_ready
    if n == 0:
        return np.zeros((0, num_mel_bins), dtype=np.float32)
    return np.stack([fb.get_frame(i) for i in range(n)]).astype(np.float32)


def feature_paths(data_dir: str, split: str) -> Tuple[str, str]:
    return (os.path.join(data_dir, f"{split}.fbank.npy"), os.path.join(data_dir, f"{split}.fbank.len"))


def extract_split(data_dir: str, split: str, num_mel_bins: int = NUM_MEL_BINS) -> Tuple[np.ndarray, List[int]]:
    """Compute fbank for every row of ``{data_dir}/{split}.tsv``; write ``.fbank.npy``/``.fbank.len``."""
    manifest = Manifest.load(os.path.join(data_dir, f"{split}.tsv"))
    feats, lens = [], []
    for i in range(len(manifest)):
        n = manifest.num_samples(i)
        f = compute_fbank(manifest.audio(i), num_mel_bins)
        if len(f) == 0:
            raise ValueError(
                f"{manifest.where(i)}: is shorter than one 25 ms window ({n} samples); remove the row"
            )
        assert len(f) == num_frames_100hz(n), (len(f), n)
        feats.append(f)
        lens.append(len(f))
    all_feats = np.concatenate(feats) if feats else np.zeros((0, num_mel_bins), np.float32)
    npy, lens_path = feature_paths(data_dir, split)
    np.save(npy, all_feats)
    with open(lens_path, "w") as fo:
        fo.write("".join(f"{n}\n" for n in lens))
    return all_feats, lens


def speaker_stats(per_speaker: Dict[str, List[np.ndarray]]) -> Dict[str, np.ndarray]:
    """Mean and standard deviation over all frames of each speaker -> arrays for ``cmvn.npz``."""
    speakers = sorted(per_speaker)
    mean, std, frames = [], [], []
    for s in speakers:
        x = np.concatenate(per_speaker[s]).astype(np.float64)
        mean.append(x.mean(0))
        std.append(np.maximum(x.std(0), STD_FLOOR))
        frames.append(len(x))
    return {
        "speakers": np.array(speakers),
        "mean": np.array(mean, dtype=np.float32),
        "std": np.array(std, dtype=np.float32),
        "frames": np.array(frames, dtype=np.int64),
    }


def extract_features(data_dir: str, splits: Iterable[str], num_mel_bins: int = NUM_MEL_BINS) -> Dict:
    """Features for each split and per-speaker CMVN statistics over all of them (``cmvn.npz``)."""
    per_speaker: Dict[str, List[np.ndarray]] = {}
    for split in splits:
        feats, lens = extract_split(data_dir, split, num_mel_bins)
        spk_path = os.path.join(data_dir, f"{split}.spk")
        if not os.path.isfile(spk_path):
            raise FileNotFoundError(
                f"{spk_path}: missing; per-speaker normalisation needs one speaker id per manifest row"
            )
        spks = load_labels(spk_path, len(lens), os.path.join(data_dir, f"{split}.tsv"))
        offsets = np.concatenate([[0], np.cumsum(lens)])
        for i, s in enumerate(spks):
            per_speaker.setdefault(s.strip(), []).append(feats[offsets[i]: offsets[i + 1]])
    stats = speaker_stats(per_speaker)
    np.savez(os.path.join(data_dir, CMVN_FILE), **stats)
    return stats


class SpeakerFeatures:
    """Per-speaker-normalised fbank of one split, read from the files ``extract_features`` wrote.

    ``features[i]`` -> float32 (frames_i, 80), normalised with the statistics of row i's speaker.
    """

    def __init__(self, data_dir: str, split: str):
        npy, lens_path = feature_paths(data_dir, split)
        tsv = os.path.join(data_dir, f"{split}.tsv")
        hint = f"run `speechlm splat features {data_dir} --splits {split} ...` first"
        for p in (npy, lens_path, os.path.join(data_dir, CMVN_FILE)):
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: missing; {hint}")
        _, rows = load_manifest(tsv)
        self.lens = np.array([int(x) for x in load_labels(lens_path, len(rows), tsv)], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lens)])
        self.feats = np.load(npy, mmap_mode="r")
        if len(self.feats) != self.offsets[-1]:
            raise ValueError(f"{npy}: has {len(self.feats)} frames but {lens_path} sums to "
                             f"{self.offsets[-1]}; {hint}")
        stats = np.load(os.path.join(data_dir, CMVN_FILE))
        index = {s: k for k, s in enumerate(stats["speakers"].tolist())}
        spk_path = os.path.join(data_dir, f"{split}.spk")
        spks = load_labels(spk_path, len(rows), tsv)
        self.speaker_index = np.zeros(len(rows), dtype=np.int64)
        for i, s in enumerate(spks):
            if s.strip() not in index:
                raise ValueError(f"{spk_path}:{i + 1}: speaker {s.strip()!r} has no statistics in "
                                 f"{os.path.join(data_dir, CMVN_FILE)}; {hint}")
            self.speaker_index[i] = index[s.strip()]
        self.mean, self.std = stats["mean"], stats["std"]

    def __len__(self):
        return len(self.lens)

    def __getitem__(self, i: int) -> np.ndarray:
        x = np.asarray(self.feats[self.offsets[i]: self.offsets[i + 1]], dtype=np.float32)
        k = self.speaker_index[i]
        return (x - self.mean[k]) / self.std[k]
