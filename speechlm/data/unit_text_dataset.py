"""Unpaired text for SpeechLM: upsampled unit sequences paired with their letters, memory-mapped.

``TEXT_DIR/{split}.{unit}-ltr.{unit}.{bin,idx}`` and ``{split}.{unit}-ltr.ltr.{bin,idx}`` (fairseq mmap
indexed datasets, written by ``speechlm binarize``), one sentence per entry. A trailing ``</s>``
(fairseq's binarizer appends one by default) is dropped from the letters (CTC has no end symbol) but
counted in the batch's ``ntokens``, and kept in the units with ``unit_eos=True``: both as the published
training does (its UCTC divides by target tokens with ``</s>``, its unit input ends in ``</s>``).
"""
import json
import os

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils

from speechlm.errors import UserError, UserFileNotFoundError


def text_paths(text_dir: str, split: str, unit: str):
    """``(units_prefix, letters_prefix)`` of a binarized split (without ``.bin``/``.idx``)."""
    stem = os.path.join(text_dir, f"{split}.{unit}-ltr")
    return f"{stem}.{unit}", f"{stem}.ltr"


def check_binarized(text_dir: str, split: str, unit: str) -> None:
    """Refuse a binarized split that ``binarize`` did not finish: its summary (written last) missing, a
    file's size not the one the summary recorded, or a ``.bin`` shorter or longer than its ``.idx`` says."""
    stem = os.path.join(text_dir, f"{split}.{unit}-ltr")
    redo = (f"binarize it again (speechlm binarize ... --dest {text_dir} --split {split}) and give the "
            "same directory")
    prefixes = [f"{stem}.{unit}", f"{stem}.ltr"]
    if not all(os.path.isfile(p + ".bin") and os.path.isfile(p + ".idx") for p in prefixes):
        return  # the loader names what is missing
    marker = stem + ".summary.json"
    if not os.path.isfile(marker):
        raise UserError(f"{marker}: missing, so {stem}.* were not finished by `speechlm binarize` (killed, or "
                        f"still running?); {redo}")
    try:
        with open(marker, encoding="utf-8") as f:
            summary = json.load(f)
    except ValueError:
        raise UserError(f"{marker}: not a binarize summary (cut short?); {redo}") from None
    for name, size in (summary.get("files") or {}).items():
        path = os.path.join(text_dir, name)
        actual = os.path.getsize(path) if os.path.isfile(path) else None
        if actual != size:
            raise UserError(f"{path}: {actual} bytes, but the binarize run that wrote {marker} wrote {size}; "
                            f"the files of this split come from different or unfinished runs; {redo}")
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    for p in prefixes:
        try:
            index = MMapIndexedDataset.Index(p + ".idx")
            expected = int(index.sizes.astype("int64").sum()) * index.dtype().itemsize
            del index
        except (ValueError, AssertionError, OSError, IndexError) as e:
            raise UserError(f"{p}.idx: not a readable fairseq index ({e}); {redo}") from None
        actual = os.path.getsize(p + ".bin")
        if actual != expected:
            raise UserError(f"{p}.bin: {actual} bytes but {p}.idx describes {expected} (cut short, or from "
                            f"another run); {redo}")


def load_text_dataset(text_dir, split, unit, unit_dict, letter_dict, shuffle=True, unit_eos=False):
    """Open a split as a ``UnitTextDataset``; ``FileNotFoundError`` names the missing files."""
    check_binarized(text_dir, split, unit)  # a killed or concurrent binarize: refused, naming the file
    unit_prefix, ltr_prefix = text_paths(text_dir, split, unit)
    datasets = []
    for prefix, d in ((unit_prefix, unit_dict), (ltr_prefix, letter_dict)):
        ds = data_utils.load_indexed_dataset(prefix, d, dataset_impl="mmap")
        if ds is None:
            raise UserFileNotFoundError(
                f"{prefix}.bin/.idx: binarized text not found; write it with `speechlm binarize` "
                f"(expected {split}.{unit}-ltr.{unit} and {split}.{unit}-ltr.ltr in {text_dir})"
            )
        datasets.append(ds)
    return UnitTextDataset(datasets[0], datasets[1], unit_dict, letter_dict, unit_prefix, ltr_prefix, shuffle,
                           unit_eos=unit_eos)


class UnitTextDataset(FairseqDataset):
    """Items ``{"id", "units": LongTensor (T,), "letters": LongTensor (L,)}``; ``sizes`` = unit counts.

    ``unit_eos``: keep the stored trailing ``</s>`` in ``units`` (the published pre-training's input);
    False drops it (probes and checks that want the units only).
    """

    def __init__(self, units, letters, unit_dict: Dictionary, letter_dict: Dictionary,
                 unit_name="units", letter_name="letters", shuffle=True, unit_eos=False):
        if len(units) != len(letters):
            raise UserError(
                f"{unit_name}: {len(units)} sentences but {letter_name}: {len(letters)}; the unit and "
                "letter files of one split must come from the same binarize run"
            )
        self.units, self.letters = units, letters
        self.unit_dict, self.letter_dict = unit_dict, letter_dict
        self.shuffle = shuffle
        eos = unit_dict.eos()
        self.sizes = np.asarray(units.sizes, dtype=np.int64).copy()
        # the eos strip is decided per file from its first entry (binarize appends it to all or none)
        self._unit_eos = len(units) > 0 and int(units[0][-1]) == eos and not unit_eos  # strip it
        self._ltr_eos = len(letters) > 0 and int(letters[0][-1]) == letter_dict.eos()
        if self._unit_eos:
            self.sizes -= 1

    def __getitem__(self, i):
        u, l = self.units[i].long(), self.letters[i].long()
        if self._unit_eos:
            u = u[:-1]
        if self._ltr_eos:
            l = l[:-1]
        return {"id": i, "units": u, "letters": l}

    def __len__(self):
        return len(self.sizes)

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.sizes[index])

    def num_tokens_vec(self, indices):
        return self.sizes[indices]

    def ordered_indices(self):
        if self.shuffle:
            return np.lexsort([np.random.permutation(len(self)), self.sizes])
        return np.argsort(self.sizes, kind="stable")

    def collater(self, samples):
        """-> ``{"id", "net_input": {"units" (B,T), "padding_mask" (B,T)}, "target" (B,L) letters,
        "target_lengths" (B,), "ntokens" (letters, with the ``</s>`` of each sentence when the file has
        it: the published UCTC divisor), "nsentences"}``."""
        if not samples:
            return {}
        units = data_utils.collate_tokens([s["units"] for s in samples], self.unit_dict.pad(), left_pad=False)
        letters = data_utils.collate_tokens([s["letters"] for s in samples], self.letter_dict.pad(), left_pad=False)
        lengths = torch.tensor([len(s["units"]) for s in samples], dtype=torch.long)
        padding_mask = torch.arange(units.size(1))[None, :] >= lengths[:, None]
        target_lengths = torch.tensor([len(s["letters"]) for s in samples], dtype=torch.long)
        return {
            "id": torch.tensor([s["id"] for s in samples], dtype=torch.long),
            "net_input": {"units": units, "padding_mask": padding_mask},
            "target": letters,
            "target_lengths": target_lengths,
            "ntokens": int(target_lengths.sum()) + (len(samples) if self._ltr_eos else 0),
            "nsentences": len(samples),
        }
