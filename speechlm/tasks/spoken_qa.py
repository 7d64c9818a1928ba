"""Task ``spoken_qa``: find the answer span in a spoken passage, given a text question.

Data: ``{split}.tsv .spk`` + fbank features (the passages), ``{split}.question`` (text, one per row),
``{split}.span`` (``start_s end_s`` of the answer in the audio). Questions are tokenized with the
WordPiece tokenizer at ``bert_path`` (only the tokenizer files are read).
"""
import math
from dataclasses import dataclass, field

import numpy as np
from fairseq.tasks import register_task
from omegaconf import MISSING

from speechlm.data.readers import load_labels
from speechlm.data.splat_dataset import subset_indices
from speechlm.splat.bert import BertBundle, tokenize
from speechlm.tasks.splat_pretraining import SplatFbankTask, SplatFbankTaskConfig


@dataclass
class SpokenQaConfig(SplatFbankTaskConfig):
    bert_path: str = field(
        default=MISSING,
        metadata={"help": "directory whose WordPiece tokenizer tokenizes the questions, or "
                          "packaged:all-minilm-l6-v2"},
    )
    max_question_tokens: int = field(default=64, metadata={"help": "question tokens kept"})
    train_subset: str = field(default="train", metadata={"help": "the split that train_fraction applies to"})
    train_fraction: float = field(default=1.0, metadata={"help": "fraction of the training split to use"})
    subset_seed: int = field(default=1, metadata={"help": "seed choosing the train_fraction subset"})


def read_spans(path: str, num_rows: int, tsv: str) -> np.ndarray:
    """(num_rows, 2) float32 answer spans in seconds; errors name the line."""
    spans = []
    for i, line in enumerate(load_labels(path, num_rows, tsv)):
        try:
            a, b = (float(x) for x in line.split())
        except ValueError:
            raise ValueError(f"{path}:{i + 1}: expected 'start_s end_s', got {line!r}") from None
        if not (0 <= a < b) or not math.isfinite(b):
            raise ValueError(f"{path}:{i + 1}: span {a} .. {b} is not a positive interval in seconds")
        spans.append((a, b))
    return np.array(spans, dtype=np.float32).reshape(-1, 2)


@register_task("spoken_qa", dataclass=SpokenQaConfig)
class SpokenQaTask(SplatFbankTask):
    def __init__(self, cfg: SpokenQaConfig):
        super().__init__(cfg)
        self.tokenizer = BertBundle(cfg.bert_path).get_tokenizer()

    @property
    def question_vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def question_pad(self) -> int:
        return self.tokenizer.pad_token_id

    def row_indices(self, split, num_rows):
        if split == self.cfg.train_subset:
            return subset_indices(num_rows, self.cfg.train_fraction, self.cfg.subset_seed)
        return None

    def extras(self, split, num_rows):
        tsv = self.split_path(split, "tsv")
        questions = load_labels(self.split_path(split, "question"), num_rows, tsv)
        ids = tokenize(self.tokenizer, questions, self.cfg.max_question_tokens)
        spans = read_spans(self.split_path(split, "span"), num_rows, tsv)
        return {"question": (ids, self.question_pad), "span": (list(spans), None)}
