"""Task ``spoken_qa``: find the answer span in a spoken passage, given a text question.

Data: ``{split}.tsv .spk`` + fbank features (the passages), ``{split}.question`` (text, one per row),
``{split}.span`` (``start_s end_s`` of the answer in the audio). Questions are tokenized with the
WordPiece tokenizer at ``bert_path`` and encoded by the language module there (the model builds it with
``build_language_module``; frozen unless ``model.finetune_language_module``).
"""
from dataclasses import dataclass, field

from fairseq.tasks import register_task
from omegaconf import MISSING

from speechlm.data.readers import load_labels
from speechlm.data.splat_dataset import subset_indices
from speechlm.data.splat_text import read_spans
from speechlm.splat.bert import BertBundle, tokenize
from speechlm.tasks.splat_pretraining import SplatFbankTask, SplatFbankTaskConfig


@dataclass
class SpokenQaConfig(SplatFbankTaskConfig):
    bert_path: str = field(
        default=MISSING,
        metadata={"help": "language module (local BERT directory or packaged:all-minilm-l6-v2) whose "
                          "tokenizer and encoder read the questions"},
    )
    max_question_tokens: int = field(default=64, metadata={"help": "question tokens kept"})
    train_subset: str = field(default="train", metadata={"help": "the split that train_fraction applies to"})
    train_fraction: float = field(default=1.0, metadata={"help": "fraction of the training split to use"})
    subset_seed: int = field(default=1, metadata={"help": "seed choosing the train_fraction subset"})


@register_task("spoken_qa", dataclass=SpokenQaConfig)
class SpokenQaTask(SplatFbankTask):
    def __init__(self, cfg: SpokenQaConfig):
        super().__init__(cfg)
        self.bert = BertBundle(cfg.bert_path)
        self.tokenizer = self.bert.get_tokenizer()

    def build_language_module(self, frozen: bool = True):
        """The BERT encoder at ``bert_path`` that encodes the questions."""
        return self.bert.get_model(frozen=frozen)

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
