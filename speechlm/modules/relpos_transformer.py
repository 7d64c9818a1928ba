"""Transformer stacks with a learned relative position bias (T5/WavLM-style buckets).

The layers are fairseq's wav2vec2 ``TransformerSentenceEncoderLayer`` (same parameters and
state-dict keys); the subclass only passes the position bias to the attention in the post-LN
branch too (fairseq drops ``self_attn_mask`` there). The bias is one ``(num_buckets, heads)``
table per stack, shared by its layers, added to the attention logits.
"""
import math
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from fairseq.models.wav2vec.wav2vec2 import TransformerSentenceEncoderLayer, make_conv_pos
from fairseq.modules import LayerNorm


def relative_position_bucket(relative_position: torch.Tensor, num_buckets: int, max_distance: int):
    """Bidirectional T5 buckets: half per direction; exact below ``num_buckets // 4``, log above."""
    num_buckets = num_buckets // 2
    ret = (relative_position > 0).long() * num_buckets
    n = relative_position.abs()
    max_exact = num_buckets // 2
    is_small = n < max_exact
    large = max_exact + (
        torch.log(n.float().clamp(min=1) / max_exact)
        / math.log(max_distance / max_exact)
        * (num_buckets - max_exact)
    ).long()
    large = torch.minimum(large, torch.full_like(large, num_buckets - 1))
    return ret + torch.where(is_small, n, large)


class RelativePositionBias(nn.Module):
    """``forward(T) -> (heads, T, T)`` additive attention bias depending on key - query offset."""

    def __init__(self, num_heads: int, num_buckets: int = 320, max_distance: int = 800):
        super().__init__()
        self.num_heads, self.num_buckets, self.max_distance = num_heads, num_buckets, max_distance
        self.embedding = nn.Embedding(num_buckets, num_heads)
        nn.init.zeros_(self.embedding.weight)

    def forward(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, device=self.embedding.weight.device)
        buckets = relative_position_bucket(pos[None, :] - pos[:, None], self.num_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)


class RelPosEncoderLayer(TransformerSentenceEncoderLayer):
    """fairseq's wav2vec2 encoder layer; ``forward(x (T,B,C), bias (B*H,T,T), padding (B,T))``."""

    def forward(self, x, self_attn_mask=None, self_attn_padding_mask=None, need_weights=False, att_args=None):
        if self.layer_norm_first:
            return super().forward(x, self_attn_mask, self_attn_padding_mask, need_weights, att_args)
        residual = x
        x, attn = self.self_attn(
            query=x, key=x, value=x, key_padding_mask=self_attn_padding_mask,
            attn_mask=self_attn_mask, need_weights=False,
        )
        x = self.self_attn_layer_norm(residual + self.dropout1(x))
        residual = x
        x = self.dropout2(self.activation_fn(self.fc1(x)))
        x = self.fc2(x)
        layer_result = x
        x = self.final_layer_norm(residual + self.dropout3(x))
        return x, (attn, layer_result)


class RelPosTransformer(nn.Module):
    """A stack of ``num_layers`` layers with a relative position bias and optional conv positions.

    ``forward(x (B,T,C), padding_mask (B,T) bool or None, output_layer=None) -> (B,T,C)``;
    ``output_layer`` (1-based) stops after that layer. Post-LN stacks (``layer_norm_first=False``,
    the Base models) normalise their input; pre-LN stacks normalise their output.
    """

    def __init__(
        self, num_layers: int, embed_dim: int, ffn_dim: int, num_heads: int, dropout: float,
        attention_dropout: float, activation_dropout: float, activation_fn: str,
        layer_norm_first: bool, layerdrop: float, num_buckets: int, max_distance: int,
        conv_pos: int = 0, conv_pos_groups: int = 16,
    ):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.layer_norm_first, self.layerdrop = layer_norm_first, layerdrop
        self.dropout = nn.Dropout(dropout)
        self.pos_conv = make_conv_pos(embed_dim, conv_pos, conv_pos_groups) if conv_pos > 0 else None
        self.rel_pos_bias = RelativePositionBias(num_heads, num_buckets, max_distance)
        self.layers = nn.ModuleList(
            RelPosEncoderLayer(
                embedding_dim=embed_dim, ffn_embedding_dim=ffn_dim, num_attention_heads=num_heads,
                dropout=dropout, attention_dropout=attention_dropout,
                activation_dropout=activation_dropout, activation_fn=activation_fn,
                layer_norm_first=layer_norm_first,
            )
            for _ in range(num_layers)
        )
        self.layer_norm = LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, output_layer: Optional[int] = None):
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        if self.pos_conv is not None:
            x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        B, T, _ = x.shape
        bias = self.rel_pos_bias(T).to(x.dtype)
        bias = bias.unsqueeze(0).expand(B, -1, -1, -1)
        if padding_mask is not None:  # padded keys join the additive bias (one float mask, not two kinds)
            bias = bias.masked_fill(padding_mask[:, None, None, :], float("-inf"))
        bias = bias.reshape(B * self.num_heads, T, T)
        x = x.transpose(0, 1)
        n = len(self.layers) if output_layer is None else output_layer
        for i, layer in enumerate(self.layers[:n]):
            if self.training and self.layerdrop > 0 and np.random.random() < self.layerdrop:
                continue
            x, _ = layer(x, self_attn_mask=bias, self_attn_padding_mask=None)
        x = x.transpose(0, 1)
        if self.layer_norm_first and n == len(self.layers):
            x = self.layer_norm(x)
        return x
