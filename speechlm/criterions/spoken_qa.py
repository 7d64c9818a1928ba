"""Criterion ``spoken_qa``: cross-entropy on the answer's start and end frames; AOS and frame F1.

Gold spans come in seconds and are turned into frames of the speech module (``model.frame_rate``).
The predicted span maximises start_logit[i] + end_logit[j] over i <= j < i + max_answer_seconds.
AOS (Audio Overlapping Score, Li et al. 2018) = |pred ∩ gold| / |pred ∪ gold|; frame F1 is the F1 of
the predicted frames against the gold frames.
"""
import math
from dataclasses import dataclass, field
from typing import Tuple

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from speechlm.criterions.reduce import log_means_per_sample


def spans_to_frames(span_s: torch.Tensor, frame_rate: float, lengths: torch.Tensor) -> torch.Tensor:
    """(B, 2) seconds -> (B, 2) inclusive frame indices, clipped to each utterance's length."""
    eps = 1e-3  # seconds x rate in float32: 0.3 * 50 must give frame 15, not 15.0000006
    start = torch.floor(span_s[:, 0] * frame_rate + eps).long()
    end = torch.ceil(span_s[:, 1] * frame_rate - eps).long() - 1
    last = lengths - 1
    start = torch.minimum(start, last)
    end = torch.minimum(torch.maximum(end, start), last)
    return torch.stack([start, end], 1)


def best_spans(start_logits: torch.Tensor, end_logits: torch.Tensor, max_len: int) -> torch.Tensor:
    """(B, T) logits (-inf at padding) -> (B, 2) argmax of start[i] + end[j], i <= j < i + max_len."""
    T = start_logits.shape[1]
    score = start_logits[:, :, None] + end_logits[:, None, :]
    i = torch.arange(T, device=score.device)
    allowed = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_len)
    score = score.masked_fill(~allowed, float("-inf")).flatten(1)
    best = score.argmax(-1)
    return torch.stack([best // T, best % T], 1)


def span_overlap_scores(pred: torch.Tensor, gold: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Inclusive frame spans (B, 2) -> (AOS, F1), each (B,)."""
    inter = (torch.minimum(pred[:, 1], gold[:, 1]) - torch.maximum(pred[:, 0], gold[:, 0]) + 1).clamp(min=0)
    len_p = pred[:, 1] - pred[:, 0] + 1
    len_g = gold[:, 1] - gold[:, 0] + 1
    aos = inter / (len_p + len_g - inter)
    prec, rec = inter / len_p, inter / len_g
    f1 = torch.where(inter > 0, 2 * prec * rec / (prec + rec).clamp(min=1e-9), torch.zeros_like(prec))
    return aos.float(), f1.float()


@dataclass
class SpokenQaCriterionConfig(FairseqDataclass):
    max_answer_seconds: float = field(default=3.0, metadata={"help": "longest predicted answer span"})


@register_criterion("spoken_qa", dataclass=SpokenQaCriterionConfig)
class SpokenQaCriterion(FairseqCriterion):
    def __init__(self, cfg: SpokenQaCriterionConfig, task):
        super().__init__(task)
        self.max_answer_seconds = cfg.max_answer_seconds

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"], question=sample["question"])
        lengths = (~out["padding_mask"]).sum(1)
        gold = spans_to_frames(sample["span"].to(lengths.device), model.frame_rate, lengths)
        loss = F.cross_entropy(out["start_logits"], gold[:, 0], reduction="sum") + F.cross_entropy(
            out["end_logits"], gold[:, 1], reduction="sum"
        )
        with torch.no_grad():
            max_len = max(1, int(math.ceil(self.max_answer_seconds * model.frame_rate)))
            pred = best_spans(out["start_logits"], out["end_logits"], max_len)
            aos, f1 = span_overlap_scores(pred, gold)
        B = gold.shape[0]
        logging_output = {
            "loss": loss.item(),
            "aos": aos.sum().item(),
            "f1": f1.sum().item(),
            "ntokens": sample["ntokens"],
            "nsentences": B,
            "sample_size": B,
        }
        return loss, B, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        log_means_per_sample(logging_outputs, ("loss",), percents={"aos": "aos", "f1": "f1"})

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
