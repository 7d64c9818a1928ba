"""Task ``text_to_unit``: phones with durations -> frame-level hidden units (SpeechLM's text->unit tokenizer).

Data directory ``data`` (paired speech, labelled twice at 50 Hz; one line per utterance):

- ``{split}.phn``: frame-level phone units (e.g. ``speechlm phone-units label --transcripts``); runs of a
  phone give the phone sequence and its durations in frames;
- ``{split}.km``: frame-level hidden units of the same utterances (``speechlm kmeans apply``), the target;
- ``dict.phn.txt`` and ``dict.km.txt``.

A line pair whose frame counts differ is an error naming both files and the line.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

logger = logging.getLogger(__name__)


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


@dataclass
class TextToUnitConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.phn, {split}.km, dict.*.txt"})
    phone_label: str = field(default="phn", metadata={"help": "extension of the frame-level phone files"})
    unit_label: str = field(default="km", metadata={"help": "extension of the frame-level unit files"})
    max_source_positions: int = field(default=1024, metadata={"help": "longest phone sequence kept"})
    max_target_positions: int = field(default=4096, metadata={"help": "longest frame sequence kept"})
    seed: int = field(default=II("common.seed"), metadata={"help": "random seed (from common.seed)"})


@register_task("text_to_unit", dataclass=TextToUnitConfig)
class TextToUnitTask(FairseqTask):
    """Trains the non-autoregressive text->unit model (``models/text_to_unit.py``)."""

    def __init__(self, cfg: TextToUnitConfig, phone_dict: Dictionary, unit_dict: Dictionary):
        super().__init__(cfg)
        self.phone_dict, self.unit_dict = phone_dict, unit_dict

    @classmethod
    def setup_task(cls, cfg: TextToUnitConfig, **kwargs):
        dicts = []
        for label in (cfg.phone_label, cfg.unit_label):
            path = os.path.join(cfg.data, f"dict.{label}.txt")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path}: dictionary not found; task.data must hold dict.{label}.txt")
            dicts.append(Dictionary.load(path))
        logger.info("dict.%s: %d symbols, dict.%s: %d symbols", cfg.phone_label, len(dicts[0]),
                    cfg.unit_label, len(dicts[1]))
        return cls(cfg, *dicts)

    def load_dataset(self, split, epoch=1, combine=False, **kwargs):
        paths = [os.path.join(self.cfg.data, f"{split}.{x}") for x in (self.cfg.phone_label, self.cfg.unit_label)]
        lines = []
        for p in paths:
            if not os.path.isfile(p):
                raise FileNotFoundError(f"{p}: not found (split {split!r} of task.data)")
            with open(p, encoding="utf-8") as f:
                lines.append(f.read().splitlines())
        if len(lines[0]) != len(lines[1]):
            raise ValueError(f"{paths[0]} has {len(lines[0])} lines but {paths[1]} has {len(lines[1])}; "
                             "they must have one line per utterance of the same manifest")
        self.datasets[split] = TextToUnitDataset(lines[0], lines[1], self.phone_dict, self.unit_dict,
                                                 where=tuple(paths))
        logger.info("%s: %d utterances, %d frames", split, len(lines[0]), int(self.datasets[split].sizes.sum()))

    def build_inference_dataset(self, phone_lines: List[str]) -> TextToUnitDataset:
        return TextToUnitDataset(phone_lines, None, self.phone_dict, None)

    def max_positions(self):
        return self.cfg.max_source_positions, self.cfg.max_target_positions

    @property
    def source_dictionary(self):
        return self.phone_dict

    @property
    def target_dictionary(self):
        return self.unit_dict
