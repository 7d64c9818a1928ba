"""fairseq dataset of per-speaker-normalised fbank utterances, with optional per-row extras.

Batches look like::

    {"id": (B,), "nsentences": B, "ntokens": frames,
     "net_input": {"source": (B, T, 80) float, "padding_mask": (B, T) bool (True = padding)},
     **extras}

An extra is a list with one entry per row, collated either by stacking (``pad=None``; ints, floats or
equal-length arrays) or by right-padding 1-D integer sequences with ``pad``.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from fairseq.data import FairseqDataset, data_utils

from speechlm.data.fbank import SpeakerFeatures


class SplatFbankDataset(FairseqDataset):
    """Args:
    features: ``SpeakerFeatures`` of the split.
    indices: the rows to use (e.g. a 10% subset), default all.
    max_frames: longer utterances are randomly cropped to this many frames (``crop=True``) or skipped.
    extras: name -> (values per row of the split, pad value or None).
    """

    def __init__(
        self,
        features: SpeakerFeatures,
        indices: Optional[Sequence[int]] = None,
        max_frames: Optional[int] = None,
        min_frames: int = 1,
        crop: bool = False,
        shuffle: bool = True,
        extras: Optional[Dict[str, Tuple[List, Optional[int]]]] = None,
        seed: int = 1,
    ):
        self.features = features
        rows = np.arange(len(features)) if indices is None else np.asarray(indices, dtype=np.int64)
        lens = features.lens[rows]
        keep = lens >= min_frames
        if max_frames is not None and not crop:
            keep &= lens <= max_frames
        self.rows = rows[keep]
        self.num_skipped = int((~keep).sum())
        self.max_frames = max_frames
        self.crop = crop
        self.shuffle = shuffle
        self.extras = extras or {}
        self.seed = seed
        self.epoch = 1
        self.sizes = np.minimum(features.lens[self.rows], max_frames or np.iinfo(np.int64).max)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, index):
        row = int(self.rows[index])
        x = self.features[row]
        if self.crop and self.max_frames is not None and len(x) > self.max_frames:
            with data_utils.numpy_seed(self.seed, self.epoch, index):
                start = np.random.randint(0, len(x) - self.max_frames + 1)
            x = x[start: start + self.max_frames]
        item = {"id": index, "source": torch.from_numpy(np.ascontiguousarray(x))}
        for name, (values, _) in self.extras.items():
            item[name] = values[row]
        return item

    def collater(self, samples):
        if not samples:
            return {}
        lens = [len(s["source"]) for s in samples]
        T, C = max(lens), samples[0]["source"].shape[1]
        source = samples[0]["source"].new_zeros(len(samples), T, C)
        padding_mask = torch.ones(len(samples), T, dtype=torch.bool)
        for i, s in enumerate(samples):
            source[i, : lens[i]] = s["source"]
            padding_mask[i, : lens[i]] = False
        batch = {
            "id": torch.tensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": sum(lens),
            "net_input": {"source": source, "padding_mask": padding_mask},
        }
        for name, (_, pad) in self.extras.items():
            vals = [s[name] for s in samples]
            if pad is None:
                batch[name] = torch.as_tensor(np.array(vals))
            else:
                batch[name] = data_utils.collate_tokens([torch.as_tensor(v) for v in vals], pad)
        return batch

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def ordered_indices(self):
        order = [np.random.permutation(len(self))] if self.shuffle else [np.arange(len(self))]
        order.append(self.sizes)
        return np.lexsort(order)[::-1]


def subset_indices(num_rows: int, fraction: float, seed: int) -> np.ndarray:
    """A fixed random ``fraction`` of ``range(num_rows)`` (at least one row), sorted."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"train_fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return np.arange(num_rows)
    n = max(1, int(round(num_rows * fraction)))
    return np.sort(np.random.RandomState(seed).permutation(num_rows)[:n])
