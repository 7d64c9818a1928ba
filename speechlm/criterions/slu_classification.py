"""Criterion ``slu_classification``: cross-entropy on the utterance class; logs accuracy (percent)."""
from dataclasses import dataclass

import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from speechlm.criterions.reduce import log_means_per_sample


@dataclass
class SluClassificationCriterionConfig(FairseqDataclass):
    pass


@register_criterion("slu_classification", dataclass=SluClassificationCriterionConfig)
class SluClassificationCriterion(FairseqCriterion):
    def forward(self, model, sample, reduce=True):
        logits = model(**sample["net_input"])
        target = sample["target"].to(logits.device)
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        B = target.numel()
        logging_output = {
            "loss": loss.item(),
            "correct": (logits.argmax(-1) == target).sum().item(),
            "ntokens": sample["ntokens"],
            "nsentences": B,
            "sample_size": B,
        }
        return loss, B, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        log_means_per_sample(logging_outputs, ("loss",), percents={"accuracy": "correct"})

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
