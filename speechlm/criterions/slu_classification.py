"""Criterion ``slu_classification``: cross-entropy on the utterance class; logs accuracy (percent)."""
from dataclasses import dataclass

import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


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
        s = lambda k: sum(log.get(k, 0) for log in logging_outputs)
        n = max(s("sample_size"), 1)
        metrics.log_scalar("loss", s("loss") / n, n, round=4)
        metrics.log_scalar("accuracy", 100.0 * s("correct") / n, n, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
