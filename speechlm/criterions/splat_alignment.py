"""Criterion ``splat_alignment``: sequence- or token-level alignment of speech to a frozen BERT.

- ``seq``: L_seq = || s1 - t1 ||_1, the first speech output against the language module's sentence
  vector t1 (its [CLS] output, or the mean token output with ``task.text_pooling=mean``).
  ``seq_loss=contrastive`` replaces the L1 by an in-batch contrastive loss (InfoNCE on cosines): s1 of
  utterance i must be closer to its own t1 than to the other t1 of the batch. It matches the direction of
  t1 relative to the other sentences instead of every coordinate, so the part all sentences share
  earns nothing (an L1 regression that cannot yet tell sentences apart returns that shared part).
- ``tok``: L_tok = - sum_j idf(t_j) max_i cos(s_i, t_j) / sum_j idf(t_j) (BERTScore recall with idf;
  [CLS]/[SEP]/padding weigh 0).

Speech outputs go through the model's ``text_proj`` when the widths differ. Only the speech module
receives gradients: the task runs BERT under ``torch.no_grad()``.
"""
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import ChoiceEnum, FairseqDataclass

from speechlm.criterions.reduce import log_means_per_sample


def sequence_alignment_loss(s1: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
    """s1, t1 (B, H) -> (B,) L1 distances."""
    return (s1 - t1).abs().sum(-1)


def contrastive_alignment_loss(s1: torch.Tensor, t1: torch.Tensor, temperature: float) -> torch.Tensor:
    """s1, t1 (B, H) -> (B,) InfoNCE: -log softmax_j(cos(s1_i, t1_j) / temperature) at j = i. Other rows
    with the same target (one transcript spoken by several voices) are not counted as negatives."""
    sn, tn = F.normalize(s1, dim=-1), F.normalize(t1, dim=-1)
    logits = sn @ tn.T / temperature
    with torch.no_grad():
        same = (tn @ tn.T > 1 - 1e-6) & ~torch.eye(len(t1), dtype=torch.bool, device=t1.device)
    logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, torch.arange(len(s1), device=s1.device), reduction="none")


def token_alignment_loss(
    s: torch.Tensor, s_padding: torch.Tensor, t: torch.Tensor, t_weight: torch.Tensor
) -> torch.Tensor:
    """s (B, T, H) speech outputs with s_padding (B, T) True at padding; t (B, L, H) token outputs with
    t_weight (B, L) idf weights (0 for [CLS]/[SEP]/padding) -> (B,) idf-weighted negative max cosine."""
    cos = F.normalize(t, dim=-1) @ F.normalize(s, dim=-1).transpose(1, 2)  # (B, L, T)
    cos = cos.masked_fill(s_padding[:, None, :], float("-inf"))
    best = cos.max(-1).values  # (B, L)
    denom = t_weight.sum(-1)
    if (denom <= 0).any():
        raise ValueError("token_alignment_loss: a transcript has no token with positive idf weight "
                         "(empty transcript?)")
    return -(t_weight * best.masked_fill(t_weight == 0, 0.0)).sum(-1) / denom


@dataclass
class SplatAlignmentCriterionConfig(FairseqDataclass):
    alignment: ChoiceEnum(["seq", "tok"]) = field(
        default="seq", metadata={"help": "seq: L1 between s1 and [CLS]; tok: idf-weighted max cosine"}
    )
    seq_loss: ChoiceEnum(["l1", "contrastive"]) = field(
        default="l1",
        metadata={"help": "alignment=seq: l1 = || s1 - t1 ||_1 (the paper); contrastive = in-batch InfoNCE on "
                          "cosines (s1_i against every t1 of the batch)"},
    )
    temperature: float = field(default=0.1, metadata={"help": "seq_loss=contrastive: cosine temperature"})


@register_criterion("splat_alignment", dataclass=SplatAlignmentCriterionConfig)
class SplatAlignmentCriterion(FairseqCriterion):
    def __init__(self, cfg: SplatAlignmentCriterionConfig, task):
        super().__init__(task)
        if not hasattr(task, "text_representations"):
            raise ValueError("criterion splat_alignment needs task splat_alignment (it holds the BERT)")
        self.alignment = cfg.alignment
        self.seq_loss, self.temperature = cfg.seq_loss, cfg.temperature

    def forward(self, model, sample, reduce=True):
        net = sample["net_input"]
        out = model(net["source"], net["padding_mask"])
        s = model.encoder.to_text_space(out["encoder_out"])
        tokens = sample["text_tokens"]
        t = self.task.text_representations(tokens)
        t1 = self.task.sentence_vectors(tokens, t)
        if self.alignment == "seq":
            if self.seq_loss == "contrastive":
                losses = contrastive_alignment_loss(s[:, 0], t1, self.temperature)
            else:
                losses = sequence_alignment_loss(s[:, 0], t1)
        else:
            weight = self.task.idf.to(tokens.device)[tokens]
            pad = out["padding_mask"]
            if pad is None:
                pad = torch.zeros(s.shape[:2], dtype=torch.bool, device=s.device)
            losses = token_alignment_loss(s, pad, t, weight)
        with torch.no_grad():
            cos1 = F.cosine_similarity(s[:, 0], t1, dim=-1).sum()
        loss = losses.sum()
        B = s.shape[0]
        logging_output = {
            "loss": loss.item(),
            "cos_s1_cls": cos1.item(),
            "ntokens": sample["ntokens"],
            "nsentences": B,
            "sample_size": B,
        }
        return loss, B, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        log_means_per_sample(logging_outputs, ("loss", "cos_s1_cls"))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
