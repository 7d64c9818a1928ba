"""Phones with durations -> frame-level units, as a fairseq dataset (task ``text_to_unit``).

``runs`` turns frame-level phone labels into (phone, duration) pairs; ``TextToUnitDataset`` pairs them
with the frame-level unit targets of the same frames.
"""
from typing import List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils


def runs(tokens: List[str]) -> Tuple[List[str], List[int]]:
    """Run-length encoding of frame labels: ``(symbols, durations in frames)``."""
    syms, durs = [], []
    for t in tokens:
        if syms and syms[-1] == t:
            durs[-1] += 1
        else:
            syms.append(t)
            durs.append(1)
    return syms, durs


class TextToUnitDataset(FairseqDataset):
    """Items: phone ids (N,), durations (N,) and, when paired, unit targets (sum(durations),).

    ``phone_lines`` are frame-level (upsampled) phone strings; ``unit_lines`` frame-level unit strings or
    None (generation). Collated batch: ``net_input = {src_tokens (B, N), src_lengths (B,), durations (B, N)}``,
    ``target (B, T)`` padded with the unit dictionary's pad, ``target_lengths (B,)``.
    """

    def __init__(self, phone_lines, unit_lines, phone_dict: Dictionary, unit_dict: Optional[Dictionary],
                 where: Tuple[str, str] = ("phones", "units")):
        self.phone_dict, self.unit_dict = phone_dict, unit_dict
        self.src, self.dur, self.tgt = [], [], []
        for i, line in enumerate(phone_lines):
            frames = line.split()
            syms, durs = runs(frames)
            self.src.append(torch.IntTensor([phone_dict.index(s) for s in syms]).long())
            self.dur.append(torch.LongTensor(durs))
            if unit_lines is not None:
                units = unit_lines[i].split()
                if len(units) != len(frames):
                    raise ValueError(
                        f"{where[1]}:{i + 1} has {len(units)} frames but {where[0]}:{i + 1} has {len(frames)}; "
                        "phones and units must label the same 50 Hz frames (same manifest, same frame rate)"
                    )
                self.tgt.append(torch.LongTensor([unit_dict.index(u) for u in units]))
        self.sizes = np.array([int(d.sum()) for d in self.dur], dtype=np.int64)
        self.src_sizes = np.array([len(s) for s in self.src], dtype=np.int64)

    def __getitem__(self, index):
        item = {"id": index, "source": self.src[index], "durations": self.dur[index]}
        if self.tgt:
            item["target"] = self.tgt[index]
        return item

    def __len__(self):
        return len(self.src)

    def num_tokens(self, index):
        return int(self.sizes[index])

    def size(self, index):
        return int(self.src_sizes[index]), int(self.sizes[index])

    def ordered_indices(self):
        return np.lexsort((np.arange(len(self)), self.sizes))

    def collater(self, samples):
        if not samples:
            return {}
        pad = self.phone_dict.pad()
        src = data_utils.collate_tokens([s["source"] for s in samples], pad)
        dur = data_utils.collate_tokens([s["durations"] for s in samples], 0)
        batch = {
            "id": torch.LongTensor([s["id"] for s in samples]),
            "nsentences": len(samples),
            "ntokens": int(sum(int(s["durations"].sum()) for s in samples)),
            "net_input": {
                "src_tokens": src,
                "src_lengths": torch.LongTensor([len(s["source"]) for s in samples]),
                "durations": dur,
            },
        }
        if "target" in samples[0]:
            batch["target"] = data_utils.collate_tokens([s["target"] for s in samples], self.unit_dict.pad())
            batch["target_lengths"] = torch.LongTensor([len(s["target"]) for s in samples])
        return batch
