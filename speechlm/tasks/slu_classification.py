"""Task ``slu_classification``: utterance classification (intent, dialog act, sentiment) from speech.

Data: ``{split}.tsv .spk`` + fbank features + ``{split}.{label}`` (one class name per row) and
``dict.{label}.txt`` (fairseq ``symbol count`` format; the class inventory). ``train_fraction`` keeps a
fixed random part of the training split (SPLAT's low-resource curves use 1% .. 100%).
"""
import os
from dataclasses import dataclass, field

from fairseq.data import Dictionary
from fairseq.tasks import register_task

from speechlm.data.readers import load_labels
from speechlm.data.splat_dataset import subset_indices
from speechlm.tasks.splat_pretraining import SplatFbankTask, SplatFbankTaskConfig


@dataclass
class SluClassificationConfig(SplatFbankTaskConfig):
    label: str = field(default="intent", metadata={"help": "label file extension: {split}.LABEL, dict.LABEL.txt"})
    train_subset: str = field(default="train", metadata={"help": "the split that train_fraction applies to"})
    train_fraction: float = field(default=1.0, metadata={"help": "fraction of the training split to use"})
    subset_seed: int = field(default=1, metadata={"help": "seed choosing the train_fraction subset"})


def load_class_dictionary(data: str, label: str) -> Dictionary:
    path = os.path.join(data, f"dict.{label}.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; list the classes as 'name count' lines")
    return Dictionary.load(path)


@register_task("slu_classification", dataclass=SluClassificationConfig)
class SluClassificationTask(SplatFbankTask):
    def __init__(self, cfg: SluClassificationConfig):
        super().__init__(cfg)
        self.label_dict = load_class_dictionary(cfg.data, cfg.label)
        # class k <-> dictionary symbol nspecial + k (fairseq dictionaries start with 4 specials)
        self.classes = self.label_dict.symbols[self.label_dict.nspecial:]
        self.class_index = {c: k for k, c in enumerate(self.classes)}

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def row_indices(self, split, num_rows):
        if split == self.cfg.train_subset:
            return subset_indices(num_rows, self.cfg.train_fraction, self.cfg.subset_seed)
        return None

    def extras(self, split, num_rows):
        path = self.split_path(split, self.cfg.label)
        labels = load_labels(path, num_rows, self.split_path(split, "tsv"))
        targets = []
        for i, lab in enumerate(labels):
            if lab.strip() not in self.class_index:
                raise ValueError(f"{path}:{i + 1}: class {lab.strip()!r} is not in "
                                 f"dict.{self.cfg.label}.txt; add it there")
            targets.append(self.class_index[lab.strip()])
        return {"target": (targets, None)}
