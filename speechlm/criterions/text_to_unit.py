"""Criterion ``text_to_unit``: label-smoothed unit cross-entropy per frame + duration MSE (log domain)."""
import math
from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import label_smoothed_nll_loss
from fairseq.dataclass import FairseqDataclass


@dataclass
class TextToUnitCriterionConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.1, metadata={"help": "epsilon of the label-smoothed unit loss"})
    duration_loss_weight: float = field(default=1.0, metadata={"help": "weight of the duration MSE"})


@register_criterion("text_to_unit", dataclass=TextToUnitCriterionConfig)
class TextToUnitCriterion(FairseqCriterion):
    """loss = mean over frames of the label-smoothed CE + duration_loss_weight * mean over phones of
    (log_dur_pred - log(1 + frames))^2. ``sample_size`` is 1: losses are batch means."""

    def __init__(self, task, label_smoothing=0.1, duration_loss_weight=1.0):
        super().__init__(task)
        self.eps = label_smoothing
        self.duration_loss_weight = duration_loss_weight
        self.unit_pad = task.target_dictionary.pad()
        self.phone_pad = task.source_dictionary.pad()

    def forward(self, model, sample, reduce=True):
        net_input = sample["net_input"]
        out = model(**net_input)
        target = sample["target"]
        lprobs = out["logits"].float().log_softmax(-1)
        T = min(lprobs.shape[1], target.shape[1])
        lprobs, target = lprobs[:, :T], target[:, :T]
        n_frames = int(target.ne(self.unit_pad).sum())
        unit_loss, nll = label_smoothed_nll_loss(lprobs.reshape(-1, lprobs.shape[-1]), target.reshape(-1),
                                                 self.eps, ignore_index=self.unit_pad, reduce=True)
        src_mask = net_input["src_tokens"].ne(self.phone_pad)
        n_phones = int(src_mask.sum())
        dur_target = torch.log1p(net_input["durations"].float())
        dur_loss = ((out["log_durations"] - dur_target) ** 2)[src_mask].sum()
        loss = unit_loss / max(1, n_frames) + self.duration_loss_weight * dur_loss / max(1, n_phones)
        with torch.no_grad():
            mask = target.ne(self.unit_pad)
            n_correct = int((lprobs.argmax(-1).eq(target) & mask).sum())
        logging_output = {
            "loss": loss.item(),
            "unit_loss": unit_loss.item() / max(1, n_frames),
            "nll_loss": nll.item() / max(1, n_frames),
            "dur_loss": dur_loss.item() / max(1, n_phones),
            "n_correct": n_correct,
            "n_frames": n_frames,
            "ntokens": n_frames,
            "nsentences": sample["nsentences"],
            "sample_size": 1,
        }
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        n = sum(log.get("sample_size", 0) for log in logging_outputs) or 1
        for key in ("loss", "unit_loss", "nll_loss", "dur_loss"):
            metrics.log_scalar(key, sum(log.get(key, 0) for log in logging_outputs) / n, n, round=4)
        frames = sum(log.get("n_frames", 0) for log in logging_outputs)
        correct = sum(log.get("n_correct", 0) for log in logging_outputs)
        metrics.log_scalar("n_frames", frames)
        metrics.log_scalar("n_correct", correct)
        metrics.log_derived(
            "unit_accuracy",
            lambda m: round(100.0 * m["n_correct"].sum / m["n_frames"].sum, 3) if m["n_frames"].sum > 0 else math.nan,
        )

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
