"""Criterion ``speechlm``: UMLM at both transformer outputs + feature penalty + ``text_loss_weight`` x UCTC.

On the speech batch: cross-entropy of the unit at every masked frame, from the Speech Transformer
(layer 0) and the Shared Transformer (layer 1) outputs, summed; ``sample_size`` = masked frames; plus
``feature_penalty_weight`` (10, as the published model) x the mean square of the conv front end's
output, per masked frame; with ``model.l2_embedding`` (off in the released models) also
``embedding_l2_weight`` x the model's embedding L2 loss, per masked frame. On the text batch: CTC from the UCTC head to the letters (blank = the
letter dictionary's ``<s>``, as fairseq's ``ctc`` criterion), rescaled so that after fairseq divides
by ``sample_size`` the total is ``UMLM per masked frame (both layers) + 10 * penalty +
text_loss_weight * UCTC per target token`` (letters plus each sentence's ``</s>``: the text batch's
``ntokens``, the published criterion's divisor).

Logged (all natural-log): ``umlm_loss_0/1`` per masked frame, ``umlm_acc_0/1`` masked-unit accuracy,
``features_pen``, ``uctc_loss`` per letter; in validation only, ``text_ler`` letter error rate (%) of
greedy CTC on the text batch.
"""
from dataclasses import dataclass, field
from typing import List

import editdistance
import torch
import torch.nn.functional as F
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from speechlm.decoding.ctc import greedy_ctc

UMLM_LAYERS = (0, 1)  # 0: Speech Transformer output, 1: Shared Transformer output


@dataclass
class SpeechLMCriterionConfig(FairseqDataclass):
    text_loss_weight: float = field(default=0.1, metadata={"help": "lambda: weight of UCTC against UMLM"})
    umlm_layer_weights: List[float] = field(
        default_factory=lambda: [1.0, 1.0], metadata={"help": "weights of UMLM at the speech / shared output"}
    )
    feature_penalty_weight: float = field(
        default=10.0, metadata={"help": "weight of the front end's feature penalty (published: 10)"}
    )
    embedding_l2_weight: float = field(
        default=1.0, metadata={"help": "weight of the embedding L2 loss when model.l2_embedding is on (the "
                                       "published loss_weights' second entry)"}
    )


def uctc_loss(logits, input_lengths, targets, target_lengths, blank: int, reduction: str = "sum"):
    """CTC of ``logits`` (B,T,V) against padded ``targets`` (B,L); infeasible utterances count 0."""
    lprobs = F.log_softmax(logits.float(), dim=-1).transpose(0, 1)  # (T,B,V)
    mask = torch.arange(targets.size(1), device=targets.device)[None, :] < target_lengths[:, None]
    flat = targets[mask]
    return F.ctc_loss(lprobs, flat, input_lengths, target_lengths, blank=blank,
                      reduction=reduction, zero_infinity=True)


@register_criterion("speechlm", dataclass=SpeechLMCriterionConfig)
class SpeechLMCriterion(FairseqCriterion):
    def __init__(self, cfg: SpeechLMCriterionConfig, task):
        super().__init__(task)
        self.text_loss_weight = cfg.text_loss_weight
        if len(cfg.umlm_layer_weights) != len(UMLM_LAYERS):
            raise ValueError(f"criterion.umlm_layer_weights={cfg.umlm_layer_weights}: need {len(UMLM_LAYERS)} weights")
        self.umlm_layer_weights = list(cfg.umlm_layer_weights)
        letters = getattr(task, "letter_dictionary", None)
        self.blank = letters.bos() if letters is not None else 0
        self.feature_penalty_weight = cfg.feature_penalty_weight
        self.embedding_l2_weight = cfg.embedding_l2_weight

    def forward(self, model, sample, reduce=True):
        log = {}
        speech = sample["speech"]
        out = model(**speech["net_input"], target=speech["target"])
        targets = out["umlm_targets"]
        n_masked = targets.numel()
        loss = 0.0
        for layer, logits in zip(UMLM_LAYERS, out["umlm_logits"]):
            ce = F.cross_entropy(logits, targets, reduction="sum")
            loss = loss + self.umlm_layer_weights[layer] * ce
            with torch.no_grad():
                log[f"umlm_loss_{layer}"] = ce.item()
                log[f"umlm_correct_{layer}"] = int((logits.argmax(-1) == targets).sum())
        log["umlm_count"] = n_masked
        sample_size = max(n_masked, 1)
        if self.feature_penalty_weight > 0:
            pen = out["features_pen"]
            loss = loss + self.feature_penalty_weight * pen * sample_size
            log["features_pen"] = pen.item() * sample_size
        if "embedding_l2_loss" in out:
            l2 = out["embedding_l2_loss"]
            loss = loss + self.embedding_l2_weight * l2 * sample_size
            log["embedding_l2"] = l2.item() * sample_size

        text = sample.get("text")
        if text is not None and self.text_loss_weight > 0:
            t_out = model.forward_text(**text["net_input"])
            ctc = uctc_loss(t_out["uctc_logits"], t_out["uctc_lengths"], text["target"],
                            text["target_lengths"], self.blank)
            n_letters = int(text["target_lengths"].sum())
            # per target token with each sentence's </s> (the text batch's ntokens), as the published criterion
            n_div = int(text.get("ntokens", n_letters))
            loss = loss + self.text_loss_weight * ctc * (sample_size / max(n_div, 1))
            log["uctc_loss"] = ctc.item()
            log["text_letters"] = n_letters
            log["text_sentences"] = text["nsentences"]
            if not model.training:  # decoding costs CPU time every step: validation only
                errors = 0
                hyps = greedy_ctc(t_out["uctc_logits"].detach(), t_out["uctc_lengths"], self.blank)
                for b, hyp in enumerate(hyps):
                    ref = text["target"][b, : int(text["target_lengths"][b])].tolist()
                    errors += editdistance.eval(hyp, ref)
                log["text_letter_errors"] = errors
                log["text_letters_decoded"] = n_letters

        log.update({
            "loss": loss.item() if torch.is_tensor(loss) else float(loss),
            "sample_size": sample_size,
            "ntokens": speech["ntokens"],
            "nsentences": speech["nsentences"],
        })
        return loss, sample_size, log

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(lo.get(key, 0) for lo in logging_outputs)

        sample_size = total("sample_size")
        metrics.log_scalar("loss", total("loss") / max(sample_size, 1), sample_size, round=3)
        metrics.log_scalar("sample_size", sample_size)
        count = total("umlm_count")
        for layer in UMLM_LAYERS:
            metrics.log_scalar(f"umlm_loss_{layer}", total(f"umlm_loss_{layer}") / max(count, 1), count, round=3)
            metrics.log_scalar(f"umlm_acc_{layer}", 100.0 * total(f"umlm_correct_{layer}") / max(count, 1), count, round=2)
        if any("features_pen" in lo for lo in logging_outputs):
            metrics.log_scalar("features_pen", total("features_pen") / max(sample_size, 1), sample_size, round=4)
        if any("embedding_l2" in lo for lo in logging_outputs):
            metrics.log_scalar("embedding_l2", total("embedding_l2") / max(sample_size, 1), sample_size, round=4)
        letters = total("text_letters")
        if letters > 0:
            metrics.log_scalar("uctc_loss", total("uctc_loss") / letters, letters, round=3)
            metrics.log_scalar("text_sentences", total("text_sentences"))
        decoded = total("text_letters_decoded")
        if decoded > 0:
            metrics.log_scalar("text_ler", 100.0 * total("text_letter_errors") / decoded, decoded, round=2)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


