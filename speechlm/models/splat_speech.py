"""SPLAT speech module: a Transformer encoder on 80-d log-Mel frames; its first output s1 is the utterance.

Input (B, T, 80) speaker-normalised fbank (100 Hz) -> optional stacking of ``input_stride`` frames ->
linear -> + sinusoidal positions -> ``encoder_layers`` post-LN Transformer layers (fairseq's
``TransformerSentenceEncoderLayer``) -> (B, T', D). A reconstruction head maps back to (B, T, 80) for
pre-training; ``text_proj`` (only when ``text_embed_dim`` differs from D) maps into the language
module's space for alignment.

``init_from`` names a checkpoint holding a speech module (``splat_speech``, ``splat_classifier``,
``splat_spoken_qa``); its architecture and weights replace the fields here. Models that contain a
speech module (classifier, spoken QA) subclass ``SplatSpeechConfig`` and build it with
``build_speech_module``.
"""
import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules import SinusoidalPositionalEmbedding, TransformerSentenceEncoderLayer
from omegaconf import open_dict

from speechlm.checkpoint import checkpoint_model_name, read_checkpoint
from speechlm.errors import UserError, UserFileNotFoundError

logger = logging.getLogger(__name__)

# fields that define the speech module's architecture (copied from an ``init_from`` checkpoint)
ARCH_FIELDS = (
    "input_dim", "input_stride", "encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim",
    "encoder_attention_heads", "max_positions",
)
FBANK_RATE_HZ = 100  # 10 ms shift


@dataclass
class SplatSpeechConfig(FairseqDataclass):
    input_dim: int = field(default=80, metadata={"help": "feature channels (80-d log-Mel)"})
    input_stride: int = field(
        default=1, metadata={"help": "stack this many input frames per position (1 = 100 Hz, as in SPLAT)"}
    )
    encoder_layers: int = field(default=3, metadata={"help": "Transformer layers"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "model width D"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "feed-forward width"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on embeddings and layer outputs"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    max_positions: int = field(
        default=6000, metadata={"help": "longest input in positions (after stacking)"}
    )
    text_embed_dim: int = field(
        default=0,
        metadata={"help": "language-module width; a learned projection is added only when it is set "
                          "and differs from encoder_embed_dim (splat_alignment sets it)"},
    )
    init_from: str = field(
        default="",
        metadata={"help": "checkpoint with a SPLAT speech module whose architecture and weights to "
                          "start from (empty: random initialisation, i.e. SPLAT-Scratch)"},
    )


class SplatSpeechEncoder(nn.Module):
    def __init__(self, cfg: SplatSpeechConfig):
        super().__init__()
        self.cfg = cfg
        D, k = cfg.encoder_embed_dim, cfg.input_stride
        self.stride = k
        self.frame_rate = FBANK_RATE_HZ / k
        self.input_proj = nn.Linear(cfg.input_dim * k, D)
        self.register_buffer(
            "positions",
            SinusoidalPositionalEmbedding.get_embedding(cfg.max_positions, D),
            persistent=False,
        )
        self.embed_norm = nn.LayerNorm(D)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            TransformerSentenceEncoderLayer(
                embedding_dim=D,
                ffn_embedding_dim=cfg.encoder_ffn_embed_dim,
                num_attention_heads=cfg.encoder_attention_heads,
                dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout,
                activation_dropout=cfg.activation_dropout,
                activation_fn="gelu",
            )
            for _ in range(cfg.encoder_layers)
        )
        # Mockingjay-style prediction head: dense + GELU + LayerNorm + linear
        self.reconstruction_head = nn.Sequential(
            nn.Linear(D, D), nn.GELU(), nn.LayerNorm(D), nn.Linear(D, cfg.input_dim * k)
        )
        t = cfg.text_embed_dim
        self.text_proj = nn.Linear(D, t) if t and t != D else None

    def stack(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        """(B, T, C) -> (B, ceil(T/k), C*k); a stacked position is padding if its first frame is."""
        B, T, C = source.shape
        k = self.stride
        if k == 1:
            return source, padding_mask
        extra = (-T) % k
        if extra:
            source = nn.functional.pad(source, (0, 0, 0, extra))
        x = source.reshape(B, (T + extra) // k, C * k)
        pm = padding_mask[:, ::k] if padding_mask is not None else None
        return x, pm

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None) -> Dict:
        """source (B, T, C), padding_mask (B, T) True at padding -> dict with ``encoder_out`` (B, T', D)
        and ``padding_mask`` (B, T') (T' = ceil(T / input_stride)); ``reconstruct`` gives the frames back."""
        x, pm = self.stack(source, padding_mask)
        if x.shape[1] > self.cfg.max_positions:
            raise ValueError(
                f"input of {x.shape[1]} positions is longer than max_positions="
                f"{self.cfg.max_positions}; raise model.max_positions or crop the input"
            )
        x = self.input_proj(x) + self.positions[: x.shape[1]].to(x)
        x = self.dropout(self.embed_norm(x))
        if pm is not None:
            x = x.masked_fill(pm[:, :, None], 0.0)
        x = x.transpose(0, 1)
        for layer in self.layers:
            x, _ = layer(x, self_attn_padding_mask=pm if pm is not None and pm.any() else None)
        x = x.transpose(0, 1)
        return {"encoder_out": x, "padding_mask": pm}

    def reconstruct(self, encoder_out: torch.Tensor, num_frames: int) -> torch.Tensor:
        """encoder_out (B, T', D) -> predicted input frames (B, num_frames, C)."""
        B, Tp, _ = encoder_out.shape
        y = self.reconstruction_head(encoder_out).reshape(B, Tp * self.stride, -1)
        return y[:, :num_frames]

    def to_text_space(self, x: torch.Tensor) -> torch.Tensor:
        return self.text_proj(x) if self.text_proj is not None else x


def _file_identity(path: str) -> Tuple[str, int, int]:
    st = os.stat(path)
    return os.path.abspath(path), st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=1)
def _read_speech_module(path: str, identity: Tuple[str, int, int]) -> Tuple[Dict, Dict]:
    state = read_checkpoint(path)
    model_cfg = state["cfg"]["model"]
    weights = state["model"]
    prefix = "speech." if any(k.startswith("speech.") for k in weights) else ""
    if prefix == "" and not any(k.startswith("encoder.") for k in weights):
        raise UserError(
            f"{path}: holds no SPLAT speech module (model {checkpoint_model_name(state)!r}); give a "
            "checkpoint of splat_speech, splat_classifier or splat_spoken_qa"
        )
    if prefix == "":
        prefix = "encoder."
    missing = [f for f in ARCH_FIELDS if f not in model_cfg]
    if missing:
        raise UserError(f"{path}: its model config lacks {missing}: not a checkpoint of a SPLAT speech module")
    sub = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    arch = {f: model_cfg[f] for f in ARCH_FIELDS}
    return arch, sub


def read_speech_module(path: str) -> Tuple[Dict, Dict]:
    """``(architecture, speech-module weights)`` of any checkpoint holding a SPLAT speech module
    (``splat_speech``, ``splat_classifier``, ``splat_spoken_qa``), through the one reader.

    The last file read is kept (until it changes on disk) so that the task resolving the architecture and
    the model build that follows read it once. Raises ``UserError`` naming ``path``.
    """
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: checkpoint with a SPLAT speech module not found (init_from)")
    arch, weights = _read_speech_module(path, _file_identity(path))
    return dict(arch), dict(weights)


def resolve_speech_architecture(cfg) -> None:
    """Copy the speech-module architecture of ``cfg.init_from`` into ``cfg`` (in place).

    Tasks call this on the trainer's own model config before fairseq builds the model (which works on
    a merged copy), so that the config saved in every checkpoint describes the model it holds.
    """
    if getattr(cfg, "init_from", ""):
        arch, _ = read_speech_module(cfg.init_from)
        with open_dict(cfg):
            for k, v in arch.items():
                setattr(cfg, k, v)


def build_speech_module(cfg: SplatSpeechConfig) -> SplatSpeechEncoder:
    """A speech module from ``cfg``; with ``cfg.init_from``, its architecture and weights come from
    that checkpoint (written back into ``cfg`` so the saved config describes the model)."""
    if not cfg.init_from:
        return SplatSpeechEncoder(cfg)
    arch, weights = read_speech_module(cfg.init_from)
    _read_speech_module.cache_clear()  # built: the weights need not stay in memory
    with open_dict(cfg):
        for k, v in arch.items():
            setattr(cfg, k, v)
    enc = SplatSpeechEncoder(cfg)
    # text_proj belongs to one alignment run; keep it only if the widths agree
    proj = {k: v for k, v in weights.items() if k.startswith("text_proj.")}
    weights = {k: v for k, v in weights.items() if not k.startswith("text_proj.")}
    missing, unexpected = enc.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.startswith("text_proj.")]
    if missing or unexpected:
        raise UserError(f"{cfg.init_from}: speech module keys do not match: missing {missing}, "
                        f"unexpected {unexpected}")
    if enc.text_proj is not None and proj and proj["text_proj.weight"].shape == enc.text_proj.weight.shape:
        enc.text_proj.load_state_dict({k[len("text_proj."):]: v for k, v in proj.items()})
    logger.info(f"speech module initialised from {cfg.init_from}")
    return enc


def load_speech_module(path: str) -> SplatSpeechEncoder:
    """The speech module of any checkpoint that holds one, in eval mode (with its text projection)."""
    arch, weights = read_speech_module(path)
    _read_speech_module.cache_clear()
    proj = weights.get("text_proj.weight")
    cfg = SplatSpeechConfig(**arch, text_embed_dim=0 if proj is None else proj.shape[0])
    enc = SplatSpeechEncoder(cfg)
    enc.load_state_dict(weights)
    return enc.eval()


@register_model("splat_speech", dataclass=SplatSpeechConfig)
class SplatSpeechModel(BaseFairseqModel):
    """The speech module on its own (pre-training by reconstruction, alignment)."""

    def __init__(self, cfg: SplatSpeechConfig, encoder: SplatSpeechEncoder):
        super().__init__()
        self.cfg = cfg
        self.encoder = encoder

    @classmethod
    def build_model(cls, cfg: SplatSpeechConfig, task=None):
        return cls(cfg, build_speech_module(cfg))

    @property
    def frame_rate(self) -> float:
        return self.encoder.frame_rate

    def forward(self, source, padding_mask=None, reconstruct: bool = False):
        """The encoder's dict (``encoder_out``, ``padding_mask``); with ``reconstruct`` also
        ``reconstruction`` (B, T, C), the predicted input frames (pre-training)."""
        out = self.encoder(source, padding_mask)
        if reconstruct:
            out["reconstruction"] = self.encoder.reconstruct(out["encoder_out"], source.shape[1])
        return out

    def utterance_embedding(self, source, padding_mask=None) -> torch.Tensor:
        """s1: the first output frame, (B, D)."""
        return self.encoder(source, padding_mask)["encoder_out"][:, 0]
