"""CTC fine-tuning of a pre-trained SpeechLM model for ASR (model ``speechlm_ctc``).

    waveform -> conv front end -> [time/channel masking] -> Speech Transformer -> Shared Transformer
             -> CTC head (the published UCTC head, one output per 20 ms frame) -> letters

The pre-trained ``speechlm`` checkpoint is read from ``model.w2v_path`` once, when fine-tuning starts;
its :class:`~speechlm.models.pretrained.PretrainedSpec` (model config, vocabulary sizes, UCTC letters) is
then kept in ``model.pretrained_spec`` and so saved inside every
fine-tuned checkpoint, which therefore loads (``speechlm infer``, resuming) without the pre-trained
file and without editing ``w2v_path``. When the pre-trained UCTC head predicts the same letter
dictionary as the fine-tuning task, it initialises the CTC head; otherwise the head starts random.
Pre-training-only modules are dropped by the pre-trained model's ``remove_pretraining_modules()``.

``SpeechLMCtc`` subclasses fairseq's ``Wav2VecCtc``: same ``get_logits`` / ``get_normalized_probs`` and
the same net output (``encoder_out`` (T,B,V), ``padding_mask`` (B,T)), so fairseq's ``ctc`` criterion
trains it and reports WER in validation with ``criterion.post_process: letter``.
"""
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.data.data_utils import compute_mask_indices
from fairseq.dataclass import FairseqDataclass
from fairseq.models import FairseqEncoder, register_model
from fairseq.models.wav2vec.wav2vec2_asr import Wav2VecCtc
from omegaconf import MISSING

from speechlm.checkpoint import read_checkpoint, store_in_saved_config
from speechlm.errors import UserError, UserFileNotFoundError
from speechlm.models.pretrained import PretrainedSpec
from speechlm.models.speechlm import MASK_TYPE_CHOICES, SpeechLMModel
from speechlm.modules.uctc_head import UCTCHead

logger = logging.getLogger(__name__)

# Pre-trained model fields that fine-tuning may override (regularisation), by the same names.
OVERRIDABLE = ("dropout", "attention_dropout", "activation_dropout", "encoder_layerdrop",
               "dropout_input", "feature_grad_mult")


@dataclass
class SpeechLMEncoderConfig(FairseqDataclass):
    """What both fine-tuned models (CTC and ST) take from / override in the pre-trained encoder."""

    w2v_path: str = field(
        default=MISSING, metadata={"help": "pre-trained `speechlm` checkpoint to fine-tune"}
    )
    pretrained_spec: Any = field(
        default=None,
        metadata={"help": "filled in from w2v_path when fine-tuning starts (the pre-trained model's "
                          "config and vocabularies, PretrainedSpec.to_dict()) and saved with the "
                          "fine-tuned model; leave empty"},
    )
    target_symbols: Any = field(
        default=None,
        metadata={"help": "filled in when the model is first built (the symbols of the task's target "
                          "dictionary, in id order) and saved with the model; a checkpoint loaded with "
                          "another dictionary is refused (speechlm.dictionaries); leave empty"},
    )
    no_pretrained_weights: bool = field(
        default=False,
        metadata={"help": "build the architecture of w2v_path but start from random weights "
                          "(the from-scratch baseline)"},
    )
    output_layer: Optional[int] = field(
        default=None,
        metadata={"help": "encoder layer to use, counting all L layers from 1 (None: the last)"},
    )
    dropout: float = field(default=0.0, metadata={"help": "dropout in the transformer layers"})
    attention_dropout: float = field(default=0.0, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(
        default=0.1, metadata={"help": "dropout after the feed-forward activation"}
    )
    encoder_layerdrop: float = field(
        default=0.05, metadata={"help": "probability of skipping a transformer layer in training"}
    )
    dropout_input: float = field(
        default=0.0, metadata={"help": "dropout on the projected front-end features"}
    )
    feature_grad_mult: float = field(
        default=0.0, metadata={"help": "gradient scale into the conv front end (0: frozen)"}
    )
    final_dropout: float = field(
        default=0.0, metadata={"help": "dropout on the encoder output, before the output head"}
    )
    freeze_finetune_updates: int = field(
        default=0,
        metadata={"help": "train only the output head for this many updates, then everything"},
    )
    apply_mask: bool = field(
        default=True, metadata={"help": "time and channel masking of the features in training"}
    )
    mask_prob: float = field(
        default=0.5, metadata={"help": "share of frames that start a time-mask span"}
    )
    mask_length: int = field(default=10, metadata={"help": "time-mask span length (frames)"})
    mask_selection: MASK_TYPE_CHOICES = field(
        default="static", metadata={"help": "how time-mask span lengths are chosen"}
    )
    mask_other: float = field(
        default=0.0, metadata={"help": "secondary span-length parameter (non-static selection)"}
    )
    no_mask_overlap: bool = field(default=False, metadata={"help": "forbid overlapping time spans"})
    mask_channel_prob: float = field(
        default=0.0, metadata={"help": "share of channels that start a channel-mask span"}
    )
    mask_channel_length: int = field(
        default=64, metadata={"help": "channel-mask span length (channels)"}
    )
    mask_channel_selection: MASK_TYPE_CHOICES = field(
        default="static", metadata={"help": "how channel-mask span lengths are chosen"}
    )
    mask_channel_other: float = field(
        default=0.0, metadata={"help": "secondary channel span-length parameter"}
    )
    no_mask_channel_overlap: bool = field(
        default=False, metadata={"help": "forbid overlapping channel spans"}
    )


def read_pretrained(w2v_path: str) -> Tuple[PretrainedSpec, Dict]:
    """``(spec, weights)`` of the pre-trained ``speechlm`` checkpoint ``model.w2v_path``, through the one
    reader; a missing file is a ``UserError`` naming ``model.w2v_path``."""
    if not os.path.isfile(str(w2v_path)):
        raise UserFileNotFoundError(
            f"model.w2v_path={w2v_path!r}: pre-trained checkpoint not found (pre-train first, or give "
            "the path of a `speechlm` checkpoint; convert a released one with `speechlm convert`)"
        )
    state = read_checkpoint(str(w2v_path))
    try:
        return PretrainedSpec.from_checkpoint(str(w2v_path), state), state["model"]
    except UserError as e:
        raise UserError(f"model.w2v_path={e}") from None


def build_pretrained(cfg: SpeechLMEncoderConfig) -> Tuple[SpeechLMModel, Optional[Dict]]:
    """-> (SpeechLMModel, pre-trained weights or None). Fills ``cfg.pretrained_spec`` on first use.

    The spec is saved with the fine-tuned model, which then loads without the pre-trained file.
    """
    weights = None
    if cfg.pretrained_spec is None:
        spec, weights = read_pretrained(cfg.w2v_path)
        cfg.pretrained_spec = spec.to_dict()
        store_in_saved_config(cfg, "pretrained_spec", cfg.pretrained_spec)
    spec = PretrainedSpec.from_dict(cfg.pretrained_spec)
    model = SpeechLMModel.from_spec(spec, {k: getattr(cfg, k) for k in OVERRIDABLE})
    if weights is not None and not cfg.no_pretrained_weights:
        model.load_state_dict(weights, strict=True)
        logger.info("initialised from the pre-trained model %s", cfg.w2v_path)
    elif weights is not None:
        logger.info("no_pretrained_weights: architecture of %s, random weights", cfg.w2v_path)
    return model, weights


class SpeechLMEncoder(FairseqEncoder):
    """Pre-trained SpeechLM speech encoder with fine-tuning masking and gradual unfreezing.

    ``forward(source (B,S), padding_mask (B,S) or None) -> {"encoder_out": (T,B,D),
    "padding_mask": (B,T) or None}`` at 50 Hz.
    """

    def __init__(self, cfg: SpeechLMEncoderConfig):
        super().__init__(None)
        self.cfg = cfg
        self.w2v_model, self.pretrained_state = build_pretrained(cfg)
        n_layers = len(self.w2v_model.speech_encoder.layers) + len(self.w2v_model.shared_encoder.layers)
        if cfg.output_layer is not None and not 1 <= cfg.output_layer <= n_layers:
            raise UserError(f"model.output_layer={cfg.output_layer}: the pre-trained model {cfg.w2v_path} has "
                            f"layers 1..{n_layers} (None: the last)")
        self.uctc = self.w2v_model.uctc_head  # the pre-trained UCTC head, taken by the CTC model if wanted
        self.w2v_model.remove_pretraining_modules()
        self.embed_dim = self.w2v_model.cfg.encoder_embed_dim
        self.final_dropout = nn.Dropout(cfg.final_dropout)
        self.num_updates = 0

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def _mask(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Time spans -> the pre-trained mask embedding; channel spans -> 0 (wav2vec 2.0 style)."""
        cfg = self.cfg
        B, T, C = x.shape
        if cfg.mask_prob > 0:
            mask = compute_mask_indices(
                (B, T), padding_mask, cfg.mask_prob, cfg.mask_length, cfg.mask_selection,
                cfg.mask_other, min_masks=2, no_overlap=cfg.no_mask_overlap,
                seed=int(torch.randint(1, 2 ** 31 - 1, ()).item()), epoch=0, indices=torch.arange(B),
            )
            mask = torch.from_numpy(mask).to(x.device)
            x = torch.where(mask.unsqueeze(-1), self.w2v_model.mask_emb.to(x.dtype), x)
        if cfg.mask_channel_prob > 0:
            try:
                cmask = compute_mask_indices(
                    (B, C), None, cfg.mask_channel_prob, cfg.mask_channel_length,
                    cfg.mask_channel_selection, cfg.mask_channel_other,
                    no_overlap=cfg.no_mask_channel_overlap,
                    seed=int(torch.randint(1, 2 ** 31 - 1, ()).item()), epoch=1, indices=torch.arange(B),
                )
            except ValueError:
                # fairseq raises ("this should never happens") when the random rounding of
                # mask_channel_prob * C / mask_channel_length gives 0 spans: then mask nothing.
                return x
            cmask = torch.from_numpy(cmask).to(x.device).unsqueeze(1).expand(-1, T, -1)
            x = x.masked_fill(cmask, 0.0)
        return x

    def _dropout_and_mask(self, x: torch.Tensor, frame_padding: Optional[torch.Tensor]) -> torch.Tensor:
        """The front end's features -> input dropout, then (training) time/channel masking."""
        x = self.w2v_model.dropout_input(x)
        if self.training and self.cfg.apply_mask:
            x = self._mask(x, frame_padding)
        return x

    def forward(self, source, padding_mask=None, **kwargs):
        frozen = self.training and self.num_updates < self.cfg.freeze_finetune_updates
        with torch.no_grad() if frozen else contextlib.nullcontext():
            x, frame_padding = self.w2v_model.extract_features(
                source, padding_mask, self.cfg.output_layer, transform_features=self._dropout_and_mask)
        if frame_padding is not None:
            x = x.masked_fill(frame_padding.unsqueeze(-1), 0.0)
        x = self.final_dropout(x)
        return {"encoder_out": x.transpose(0, 1), "padding_mask": frame_padding}

    def reorder_encoder_out(self, encoder_out, new_order):
        out = {"encoder_out": encoder_out["encoder_out"].index_select(1, new_order)}
        pad = encoder_out["padding_mask"]
        out["padding_mask"] = None if pad is None else pad.index_select(0, new_order)
        return out

    def max_positions(self):
        return None


def bind_target_symbols(cfg: SpeechLMEncoderConfig, task) -> None:
    """First build (training): save the target dictionary's symbols with the model. A build from a
    checkpoint (decoding, ``fairseq-generate``): refuse a task whose dictionary lists other symbols."""
    from speechlm.checkpoint import store_in_saved_config
    from speechlm.dictionaries import dictionary_path, require_same_symbols

    tgt = task.target_dictionary
    if cfg.target_symbols is None:
        cfg.target_symbols = list(tgt.symbols)
        store_in_saved_config(cfg, "target_symbols", cfg.target_symbols)
        return
    name = cfg.get("_name") if hasattr(cfg, "get") else getattr(cfg, "_name", None)
    require_same_symbols(list(cfg.target_symbols), tgt, dictionary_path(task), f"the checkpoint's {name} model")


@dataclass
class SpeechLMCtcConfig(SpeechLMEncoderConfig):
    init_head_from_uctc: bool = field(
        default=True,
        metadata={"help": "initialise the CTC head from the pre-trained UCTC head when the letter "
                          "dictionaries match (the published fine-tuning does)"},
    )
    blank_weight: float = field(default=0.0, metadata={"help": "added to the blank logit"})
    blank_mode: str = field(default="add", metadata={"help": "'add' or 'set' the blank logit"})


@register_model("speechlm_ctc", dataclass=SpeechLMCtcConfig)
class SpeechLMCtc(Wav2VecCtc):
    """``forward(source, padding_mask) -> {"encoder_out": logits (T,B,V), "padding_mask": (B,T)}``.

    The CTC head is the published UCTC head (Conv1d k=2 -> Dropout -> LayerNorm -> GELU -> Linear),
    one output per 20 ms frame.
    """

    def __init__(self, cfg: SpeechLMCtcConfig, encoder: SpeechLMEncoder, num_letters: int,
                 letters=None):
        super().__init__(cfg, encoder)
        self.ctc_head = UCTCHead(encoder.embed_dim, num_letters)
        uctc, pre = encoder.uctc, PretrainedSpec.from_dict(cfg.pretrained_spec)
        if encoder.pretrained_state is not None and uctc is not None and cfg.init_head_from_uctc:
            same = pre.num_letters == num_letters and (
                pre.letters is None or letters is None or list(pre.letters) == list(letters)
            )
            if same and not cfg.no_pretrained_weights:
                self.ctc_head.load_state_dict(uctc.state_dict())
                logger.info("CTC head initialised from the pre-trained UCTC head")
            elif not same:
                logger.warning(
                    "the pre-trained UCTC head predicts %d letters, the task's dictionary has %d "
                    "(or other symbols): the CTC head starts from random weights",
                    pre.num_letters, num_letters,
                )
        encoder.uctc = encoder.pretrained_state = None

    @classmethod
    def build_model(cls, cfg: SpeechLMCtcConfig, task):
        tgt = task.target_dictionary
        bind_target_symbols(cfg, task)
        return cls(cfg, SpeechLMEncoder(cfg), len(tgt), list(tgt.symbols))

    def forward(self, source, padding_mask=None, **kwargs):
        enc = self.w2v_encoder(source, padding_mask)
        logits = self.ctc_head(enc["encoder_out"].transpose(0, 1))  # (B,T,V)
        return {"encoder_out": logits.transpose(0, 1), "padding_mask": enc["padding_mask"]}
