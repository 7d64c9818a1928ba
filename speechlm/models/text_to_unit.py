"""Model ``text_to_unit``: a FastSpeech-like non-autoregressive phone -> hidden-unit model.

phone embedding + sinusoidal positions -> encoder (Transformer layers) -> duration predictor (log frames)
-> length regulator (each phone state repeated by its duration: the given durations when training and, by
default, when generating from the phonemizer's upsampled sequences; the predicted ones on request)
-> sinusoidal frame positions -> decoder (Transformer layers) -> unit logits, one per 50 Hz frame.
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from fairseq.dataclass import FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules import SinusoidalPositionalEmbedding


@dataclass
class TextToUnitModelConfig(FairseqDataclass):
    embed_dim: int = field(default=256, metadata={"help": "model dimension"})
    encoder_layers: int = field(default=4, metadata={"help": "Transformer layers over phones"})
    decoder_layers: int = field(default=4, metadata={"help": "Transformer layers over frames"})
    attention_heads: int = field(default=2, metadata={"help": "attention heads per layer"})
    ffn_dim: int = field(default=1024, metadata={"help": "feed-forward dimension"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the Transformer layers"})
    duration_predictor_dim: int = field(default=256, metadata={"help": "channels of the duration predictor"})
    duration_predictor_kernel: int = field(default=3, metadata={"help": "conv kernel of the duration predictor"})
    max_frames: int = field(default=8192, metadata={"help": "size of the sinusoidal position table"})


class DurationPredictor(nn.Module):
    """FastSpeech's: 2 x (conv1d -> ReLU -> LayerNorm -> dropout) -> linear; (B, N, C) -> log(1 + frames) (B, N)."""

    def __init__(self, dim, hidden, kernel, dropout):
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(dim, hidden, kernel, padding=kernel // 2),
                                    nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2)])
        self.norms = nn.ModuleList([nn.LayerNorm(hidden), nn.LayerNorm(hidden)])
        self.dropout = nn.Dropout(dropout)
        self.proj = nn.Linear(hidden, 1)

    def forward(self, x, pad_mask):
        x = x.masked_fill(pad_mask.unsqueeze(-1), 0.0)
        for conv, norm in zip(self.convs, self.norms):
            x = self.dropout(norm(torch.relu(conv(x.transpose(1, 2)).transpose(1, 2))))
        return self.proj(x).squeeze(-1).masked_fill(pad_mask, 0.0)


def length_regulate(x, durations):
    """Repeat state n of x (B, N, C) durations[b, n] times -> (B, T, C) zero-padded, and its pad mask (B, T)."""
    lengths = durations.sum(1)
    T = int(lengths.max()) if len(lengths) else 0
    out = x.new_zeros(x.shape[0], T, x.shape[2])
    for b in range(x.shape[0]):
        out[b, : int(lengths[b])] = torch.repeat_interleave(x[b], durations[b], dim=0)
    pad_mask = torch.arange(T, device=x.device).unsqueeze(0) >= lengths.unsqueeze(1)
    return out, pad_mask


@register_model("text_to_unit", dataclass=TextToUnitModelConfig)
class TextToUnitModel(BaseFairseqModel):
    def __init__(self, cfg: TextToUnitModelConfig, num_phones: int, num_units: int, padding_idx: int):
        super().__init__()
        self.cfg = cfg
        self.padding_idx = padding_idx
        self.embed = nn.Embedding(num_phones, cfg.embed_dim, padding_idx=padding_idx)
        self.register_buffer(
            "positions", SinusoidalPositionalEmbedding.get_embedding(cfg.max_frames, cfg.embed_dim), persistent=False
        )
        self.scale = cfg.embed_dim ** 0.5

        def stack(n):
            layer = nn.TransformerEncoderLayer(cfg.embed_dim, cfg.attention_heads, cfg.ffn_dim, cfg.dropout,
                                               activation="gelu", batch_first=True, norm_first=True)
            return nn.TransformerEncoder(layer, n, norm=nn.LayerNorm(cfg.embed_dim), enable_nested_tensor=False)

        self.encoder = stack(cfg.encoder_layers)
        self.decoder = stack(cfg.decoder_layers)
        self.duration_predictor = DurationPredictor(cfg.embed_dim, cfg.duration_predictor_dim,
                                                    cfg.duration_predictor_kernel, cfg.dropout)
        self.out_proj = nn.Linear(cfg.embed_dim, num_units)

    @classmethod
    def build_model(cls, cfg: TextToUnitModelConfig, task):
        return cls(cfg, len(task.source_dictionary), len(task.target_dictionary), task.source_dictionary.pad())

    def _add_positions(self, x):
        if x.shape[1] > self.positions.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} frames is longer than model.max_frames={self.positions.shape[0]}")
        return x + self.positions[: x.shape[1]].unsqueeze(0).to(x.dtype)

    def forward(self, src_tokens, src_lengths, durations=None, **kwargs):
        """src_tokens (B, N), durations (B, N) frames or None (use the predicted ones) ->
        dict(logits (B, T, units), log_durations (B, N) predicted log(1 + frames), frame_pad_mask (B, T),
        durations (B, N) used)."""
        src_mask = src_tokens.eq(self.padding_idx)
        x = self._add_positions(self.embed(src_tokens) * self.scale)
        x = self.encoder(x, src_key_padding_mask=src_mask)
        log_dur = self.duration_predictor(x, src_mask)
        if durations is None:
            durations = torch.clamp(torch.round(torch.exp(log_dur) - 1.0), min=1).long()
        durations = durations.masked_fill(src_mask, 0)
        y, frame_mask = length_regulate(x, durations)
        y = self.decoder(self._add_positions(y), src_key_padding_mask=frame_mask)
        return {"logits": self.out_proj(y), "log_durations": log_dur, "frame_pad_mask": frame_mask,
                "durations": durations}

    @torch.inference_mode()
    def generate(self, src_tokens, src_lengths, durations=None):
        """Unit ids per frame: a list of B LongTensors of sum(durations[b]) frames (argmax)."""
        out = self.forward(src_tokens, src_lengths, durations)
        pred = out["logits"].argmax(-1)
        lengths = out["durations"].sum(1).tolist()
        return [pred[b, :n] for b, n in enumerate(lengths)]
