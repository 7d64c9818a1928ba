"""Criterion ``splat_reconstruction``: L1 reconstruction of masked log-Mel input (SPLAT speech module).

The input is masked by ``splat_mask`` (frame spans and channels set to zero); the model reconstructs
the whole sequence and the loss is the L1 distance to the clean input over every non-padding frame
(``masked_only`` restricts it to the masked entries, as in Mockingjay).
"""
from dataclasses import dataclass, field

from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from speechlm.criterions.reduce import total
from speechlm.modules.splat_masking import splat_mask


@dataclass
class SplatReconstructionConfig(FairseqDataclass):
    mask_frame_prob: float = field(default=0.15, metadata={"help": "probability that a frame starts a masked span"})
    mask_span: int = field(default=4, metadata={"help": "a masked frame takes its next (span - 1) frames with it"})
    mask_channel_prob: float = field(default=0.15, metadata={"help": "probability that a channel is masked"})
    masked_only: bool = field(default=False, metadata={"help": "L1 on masked entries only (default: whole sequence)"})


@register_criterion("splat_reconstruction", dataclass=SplatReconstructionConfig)
class SplatReconstructionCriterion(FairseqCriterion):
    def __init__(self, cfg: SplatReconstructionConfig, task):
        super().__init__(task)
        self.cfg = cfg

    def forward(self, model, sample, reduce=True):
        src = sample["net_input"]["source"]
        pad = sample["net_input"]["padding_mask"]
        masked, frame_mask, channel_mask = splat_mask(
            src, pad, self.cfg.mask_frame_prob, self.cfg.mask_span, self.cfg.mask_channel_prob
        )
        out = model(masked, pad, reconstruct=True)
        err = (out["reconstruction"] - src).abs()  # (B, T, C)
        valid = ~pad
        zeroed = (frame_mask[:, :, None] | channel_mask[:, None, :]) & valid[:, :, None]
        C = src.shape[-1]
        masked_err = (err * zeroed).sum()
        if self.cfg.masked_only:
            loss = masked_err / C
            sample_size = zeroed.sum().item() / C
        else:
            loss = (err * valid[:, :, None]).sum() / C
            sample_size = valid.sum().item()
        logging_output = {
            "loss": loss.item(),
            "masked_l1": masked_err.item(),
            "masked_entries": zeroed.sum().item(),
            "ntokens": valid.sum().item(),
            "nsentences": src.shape[0],
            "sample_size": sample_size,
        }
        return loss, sample_size, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        sample_size, masked = total(logging_outputs, "sample_size"), total(logging_outputs, "masked_entries")
        metrics.log_scalar("loss", total(logging_outputs, "loss") / max(sample_size, 1), sample_size, round=4)
        metrics.log_scalar("masked_l1", total(logging_outputs, "masked_l1") / max(masked, 1), masked, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
