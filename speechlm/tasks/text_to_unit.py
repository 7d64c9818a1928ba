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
from typing import List

from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from speechlm.data.readers import read_lines
from speechlm.data.text_to_unit_dataset import TextToUnitDataset

logger = logging.getLogger(__name__)


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
            lines.append(read_lines(p))
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
