"""Audio manifest + labels as a fairseq dataset, for pre-training (frame units) and CTC (letters).

Frame labels (``.phn``, ``.km``; ``label_rate`` 50 or 100 Hz) are brought to the model's 50 Hz
frames when the dataset is built: 100 Hz labels keep every second label (the 100 Hz frame 2j has the
same centre as the 50 Hz frame j: both windows are 400 samples, shifts 160 and 320). Each utterance
of n samples must then have ``num_frames_50hz(n)`` labels; up to ``length_tolerance`` frames more or
fewer are trimmed or padded with the last label (front ends round the final frame differently); a
larger mismatch raises ``ValueError`` naming the label file, its line and the utterance.

With ``random_label_offset`` (the training split, 100 Hz labels) each batch takes the odd 100 Hz labels
instead with probability 1/2, as the published model's ``forward_targets`` does (``np.random.choice(2)``
per batch): the labels of a batch then lag its frames by 10 ms.

Crops start on a frame boundary (a multiple of 320 samples), so a cropped utterance keeps exactly
its own labels. Sequence labels (``.ltr``) are encoded whole.
"""
import logging
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from fairseq.data import Dictionary, FairseqDataset, data_utils

from speechlm.data.manifest import FRAME_SHIFT_SAMPLES, FRAME_WINDOW_SAMPLES, num_frames_50hz
from speechlm.data.readers import LabelFile, Manifest
from speechlm.errors import UserError

logger = logging.getLogger(__name__)

MODEL_LABEL_RATE = 50  # the conv front end's frame rate (Hz)


class SpeechLabelDataset(FairseqDataset):
    """Items: ``{"id", "source": FloatTensor (S,), "label": LongTensor}``.

    ``frame_labels=True``: one label per 50 Hz frame (``label_rate`` 50 or 100); else a sequence
    (letters). ``pad_audio=True`` pads a batch to its longest utterance (with a padding mask);
    ``False`` crops every utterance to the batch's shortest (HuBERT's behaviour). Utterances longer
    than ``max_sample_size`` are cropped, shorter than ``min_sample_size`` are dropped.
    """

    def __init__(
        self, manifest_path: str, label_path: str, dictionary: Dictionary, frame_labels: bool = True,
        label_rate: int = 50, length_tolerance: int = 2, max_sample_size: Optional[int] = None,
        min_sample_size: int = 0, pad_audio: bool = True, normalize: bool = False,
        random_crop: bool = True, shuffle: bool = True, seed: int = 1, allow_unk: bool = False,
        random_label_offset: bool = False,
    ):
        if frame_labels and label_rate not in (50, 100):
            raise UserError(f"label_rate={label_rate}: frame labels must be 50 or 100 Hz")
        if not frame_labels and (max_sample_size or not pad_audio):
            raise UserError("sequence labels (letters) cannot follow a crop: use max_sample_size=None and "
                             "pad_audio=True for CTC fine-tuning")
        self.manifest_path, self.label_path = manifest_path, label_path
        self.dictionary, self.frame_labels, self.label_rate = dictionary, frame_labels, label_rate
        self.length_tolerance = length_tolerance
        self.max_sample_size = max_sample_size or np.iinfo(np.int64).max
        self.pad_audio, self.normalize, self.random_crop, self.shuffle = pad_audio, normalize, random_crop, shuffle
        self.random_label_offset = bool(random_label_offset and frame_labels and label_rate == 100)
        self.seed, self.epoch = seed, 1

        self.manifest = Manifest.load(manifest_path)
        rows = self.manifest.rows
        # labels are read lazily (a LibriSpeech .km is GBs); the line count is checked here
        self.labels = LabelFile(label_path, len(rows), manifest_path, dictionary, allow_unk=allow_unk)
        keep = [i for i, (_, n) in enumerate(rows) if n >= min_sample_size]
        if len(keep) < len(rows):
            logger.warning(f"{manifest_path}: skipped {len(rows) - len(keep)} utterances shorter than "
                           f"min_sample_size={min_sample_size} samples")
        if not keep:
            raise UserError(f"{manifest_path}: no utterance has at least min_sample_size={min_sample_size} samples")
        for i in keep:  # nothing is dropped later without a word: a row with no frame is an error here
            if num_frames_50hz(rows[i][1]) == 0:
                raise UserError(
                    f"{self.manifest.where(i)}: has {rows[i][1]} samples, shorter than one "
                    f"{FRAME_WINDOW_SAMPLES}-sample frame; remove the row from the manifest"
                )
        self.rows = np.array(keep, dtype=np.int64)  # dataset index -> manifest row
        self.names = [rows[i][0] for i in keep]
        self.sizes = np.array([rows[i][1] for i in keep], dtype=np.int64)
        counts = self.labels.check_symbols()  # one pass: UTF-8, no BOM, every symbol in the dictionary
        if frame_labels:
            self._check_label_lengths(counts)
        else:
            self._check_transcripts(counts)

    # -------------------------------------------------------------- labels
    def _frame_tokens(self, i: int, tokens: List[str], offset: int = 0) -> List[str]:
        """Row ``i``'s labels at 50 Hz, exactly ``num_frames_50hz`` of them (or a ValueError); ``offset`` 1
        takes the odd 100 Hz labels, fitted to the even ones' count (one more or fewer at the end)."""
        if self.label_rate == 100 and offset:
            want = len(self._frame_tokens(i, tokens))
            odd = tokens[1::2] or tokens[:1]
            return (odd + [odd[-1]] * want)[:want]
        if self.label_rate == 100:
            tokens = tokens[::2]
        want = num_frames_50hz(int(self.sizes[i]))
        if abs(len(tokens) - want) > self.length_tolerance or not tokens:
            raise UserError(
                f"{self.labels.where(self.rows[i])}: utterance {self.names[i]} has "
                f"{len(tokens)} labels at {MODEL_LABEL_RATE} Hz (label_rate={self.label_rate}) but its "
                f"{self.sizes[i]} samples make {want} frames (tolerance {self.length_tolerance}); "
                "regenerate the labels from this manifest or fix task.label_rate"
            )
        if len(tokens) > want:
            tokens = tokens[:want]
        elif len(tokens) < want:
            tokens = tokens + [tokens[-1]] * (want - len(tokens))
        return tokens

    def _check_transcripts(self, counts):
        """A CTC target must be non-empty and short enough to align: its symbols plus one blank between
        each repeated pair must fit the utterance's 50 Hz frames (the model's finest output rate)."""
        for i in range(len(self.names)):
            row = int(self.rows[i])
            if counts[row] == 0:
                raise UserError(
                    f"{self.labels.where(row)}: utterance {self.names[i]} has an empty transcript; CTC "
                    "needs at least one symbol: fix the line or remove the utterance from the manifest"
                )
            frames = num_frames_50hz(int(self.sizes[i]))
            if 2 * counts[row] <= frames:
                continue
            toks = self.labels.tokens(row)
            need = len(toks) + sum(a == b for a, b in zip(toks, toks[1:]))
            if need > frames:
                raise UserError(
                    f"{self.labels.where(row)}: utterance {self.names[i]}: its transcript needs {need} CTC "
                    f"frames but its {self.sizes[i]} samples make only {frames} at {MODEL_LABEL_RATE} Hz; "
                    "the transcript does not belong to this audio (check the manifest order) or the audio "
                    "is cut short"
                )

    def _check_label_lengths(self, counts):
        """Counts from one pass over the label file, so a bad line fails before training starts."""
        for i in range(len(self.names)):
            n = counts[self.rows[i]]
            n50 = (n + 1) // 2 if self.label_rate == 100 else n
            want = num_frames_50hz(int(self.sizes[i]))
            if abs(n50 - want) > self.length_tolerance or n50 == 0:
                self._frame_tokens(i, self.labels.tokens(self.rows[i]))  # raises with the full message

    def get_label(self, i: int, offset: int = 0) -> torch.Tensor:
        tokens = self.labels.tokens(self.rows[i])
        if self.frame_labels:
            tokens = self._frame_tokens(i, tokens, offset)
        return torch.tensor(self.labels.encode(tokens, int(self.rows[i])), dtype=torch.long)

    # -------------------------------------------------------------- items
    def __getitem__(self, i):
        source = torch.from_numpy(self.manifest.audio(int(self.rows[i]))).float()
        if self.normalize:
            source = F.layer_norm(source, source.shape)
        item = {"id": i, "source": source, "label": self.get_label(i)}
        if self.random_label_offset:
            item["label_odd"] = self.get_label(i, offset=1)
        return item

    def __len__(self):
        return len(self.sizes)

    def num_tokens(self, index):
        return self.size(index)

    def size(self, index):
        return min(int(self.sizes[index]), self.max_sample_size)

    @property
    def sizes_capped(self):
        return np.minimum(self.sizes, self.max_sample_size)

    def num_tokens_vec(self, indices):
        return self.sizes_capped[indices]

    def set_epoch(self, epoch):
        self.epoch = epoch

    def ordered_indices(self):
        """By length (longest first after the shuffle tie-break), as fairseq's audio datasets do."""
        if self.shuffle:
            order = [np.random.permutation(len(self)), self.sizes_capped]
            return np.lexsort(order)[::-1]
        return np.argsort(self.sizes_capped, kind="stable")[::-1]

    # -------------------------------------------------------------- batches
    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        """fairseq's length buckets; an utterance longer than ``max_tokens`` (fairseq would stop with
        "Sentences lengths should not exceed max_tokens") gets a batch of its own instead."""
        indices = np.asarray(indices, dtype=np.int64)
        if max_tokens is None or len(indices) == 0:
            return super().batch_by_size(indices, max_tokens, max_sentences, required_batch_size_multiple)
        too_long = self.num_tokens_vec(indices) > max_tokens
        batches = []
        if (~too_long).any():
            batches = list(super().batch_by_size(indices[~too_long], max_tokens, max_sentences,
                                                 required_batch_size_multiple))
        if too_long.any():
            logger.warning(f"{self.manifest_path}: {int(too_long.sum())} utterances are longer than "
                           f"max_tokens={max_tokens} samples; each gets a batch of its own")
            batches += [np.array([i], dtype=np.int64) for i in indices[too_long]]
        return batches

    def _crop(self, source, label, size, rng):
        """Crop to ``size`` samples starting on a frame boundary; labels follow the frames."""
        n = len(source)
        if n <= size:
            return source, label
        max_start_frame = (n - size) // FRAME_SHIFT_SAMPLES
        start_frame = int(rng.integers(0, max_start_frame + 1)) if self.random_crop else 0
        start = start_frame * FRAME_SHIFT_SAMPLES
        source = source[start:start + size]
        if self.frame_labels:
            label = label[start_frame:start_frame + num_frames_50hz(size)]
        return source, label

    def collater(self, samples):
        """-> ``{"id", "net_input": {"source" (B,S), "padding_mask" (B,S)}, "target" (B,T),
        "target_lengths" (B,), "ntokens", "nsentences"}``; frame targets have T = conv frames of S."""
        samples = [s for s in samples if s is not None and len(s["source"]) > 0]
        if not samples:
            return {}
        lengths = [min(len(s["source"]), self.max_sample_size) for s in samples]
        size = max(lengths) if self.pad_audio else min(lengths)
        ids = [s["id"] for s in samples]
        rng = np.random.default_rng([self.seed, self.epoch, min(ids), len(ids)])
        key = "label"
        if self.random_label_offset and np.random.default_rng([self.seed, self.epoch, min(ids), len(ids), 1]).integers(2):
            key = "label_odd"
        cropped = [self._crop(s["source"], s[key], size, rng) for s in samples]
        source = cropped[0][0].new_zeros(len(samples), size)
        padding_mask = torch.zeros(len(samples), size, dtype=torch.bool)
        for b, (wav, _) in enumerate(cropped):
            source[b, : len(wav)] = wav
            padding_mask[b, len(wav):] = True
        labels = [lab for _, lab in cropped]
        pad = self.dictionary.pad()
        if self.frame_labels:
            T = num_frames_50hz(size)
            target = torch.full((len(samples), T), pad, dtype=torch.long)
            for b, lab in enumerate(labels):
                target[b, : len(lab)] = lab
        else:
            target = data_utils.collate_tokens(labels, pad_idx=pad, left_pad=False)
        target_lengths = torch.tensor([len(lab) for lab in labels], dtype=torch.long)
        net_input = {"source": source, "padding_mask": padding_mask if self.pad_audio else None}
        return {
            "id": torch.tensor(ids, dtype=torch.long),
            "net_input": net_input,
            "target": target,
            "target_lengths": target_lengths,
            "ntokens": int(target_lengths.sum()),
            "nsentences": len(samples),
        }
