"""The two transformer stacks of SpeechLM, with the published model's position scheme.

Both stacks use Shaw-style relative position *keys*: one table ``relative_keys`` of ``2 * 160``
vectors of the head dimension per stack; for query i and key j the logit gains ``q_i . r[clip(i - j)]``
(distance clipped to [-160, 159]), scaled like ``q_i . k_j``. Pre-LN layers (Large) first normalise
the table with their own ``norm_k`` LayerNorm. The Speech Transformer adds fairseq's convolutional
positions (wav2vec 2.0 / HuBERT); the Shared Transformer adds learned absolute positions (fairseq
``LearnedPositionalEmbedding`` semantics: row ``pad + 1 + t`` for frame t, 3000 positions, row
``pad`` = 0 for padding, later frames clamped to the last row) and ``layernorm_embedding``.

Speed: the relative term is computed as ``(B,H,T,d) @ (d, 320)`` then gathered to ``(B,H,T,T)``
through a small index table, never a ``(T,T,d)`` tensor of keys (on CPU this explicit softmax
path measured faster than ``F.scaled_dot_product_attention`` with a float mask).

The layers are fairseq's wav2vec2 ``TransformerSentenceEncoderLayer`` (same parameters and
state-dict keys, plus ``norm_k`` when pre-LN); only the attention call is replaced.

fp16 guard (``scaling_for_att``, the published Large model's 32, on its Shared Transformer): the
queries are divided by it before ``q . k`` and ``q . r``, so their sums stay 32x inside fp16's range
(65504); the logits are multiplied back and their row maximum subtracted before the softmax, as the
official ``multihead_attention.py``. Here the multiplication back happens in float32 (the softmax is
float32 anyway), so logits beyond fp16's range stay finite instead of turning into inf there. In
float32 the guard changes nothing but rounding: dividing and multiplying by a power of two are exact.
"""
import warnings
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models.wav2vec.wav2vec2 import TransformerSentenceEncoderLayer, make_conv_pos
from fairseq.modules import LayerNorm

# Relative distances are clipped to [-REL_POS_CLIP, REL_POS_CLIP - 1] (the published models' 160 frames = 3.2 s)
REL_POS_CLIP = 160
# Absolute positions of the Shared Transformer (the published models' max_source_positions)
MAX_SHARED_POSITIONS = 3000
# fairseq Dictionary's <pad> index: LearnedPositionalEmbedding offsets positions by it
POSITION_PAD = 1


def relative_index(length: int, device, clip: int = REL_POS_CLIP) -> torch.Tensor:
    """``(T, T)`` long: row of the relative key table for query i, key j = clip(i - j) + clip."""
    pos = torch.arange(length, device=device)
    return (pos[:, None] - pos[None, :]).clamp(-clip, clip - 1) + clip


def shared_positions(padding_mask: Optional[torch.Tensor], B: int, T: int, device) -> torch.Tensor:
    """``(B,T)`` rows of the absolute position table: ``pad + 1 + t`` at real frames, ``pad`` at padding.

    fairseq's ``make_positions`` counts real frames from the left; frames beyond
    ``MAX_SHARED_POSITIONS`` reuse the last row (the published model clamps the same way).
    """
    if padding_mask is None:
        pos = torch.arange(T, device=device).unsqueeze(0).expand(B, T) + POSITION_PAD + 1
    else:
        real = (~padding_mask).long()
        pos = torch.cumsum(real, dim=1) * real + POSITION_PAD
    return pos.clamp(max=POSITION_PAD + MAX_SHARED_POSITIONS)


def relative_attention(layer, x: torch.Tensor, rel_keys: torch.Tensor, rel_index: torch.Tensor,
                       key_padding: Optional[torch.Tensor], scaling_for_att: float = 1.0) -> torch.Tensor:
    """Self-attention of ``layer.self_attn`` on ``x (T,B,C)`` with relative keys ``rel_keys (R, d)``.

    ``scaling_for_att`` > 1: the published fp16 guard (module docstring); 1: plain attention.
    """
    attn = layer.self_attn
    T, B, C = x.shape
    H = attn.num_heads
    d = C // H
    q = attn.q_proj(x).view(T, B, H, d).permute(1, 2, 0, 3)  # (B,H,T,d)
    k = attn.k_proj(x).view(T, B, H, d).permute(1, 2, 0, 3)
    v = attn.v_proj(x).view(T, B, H, d).permute(1, 2, 0, 3)
    q = q * (d ** -0.5 / scaling_for_att)
    # only the table rows that distances in a length-T sequence reach (fewer than 320 when T < 160)
    lo, hi = int(rel_index[0, T - 1]), int(rel_index[T - 1, 0])
    rel = torch.matmul(q, rel_keys[lo: hi + 1].to(q.dtype).t())  # (B,H,T,R')
    logits = torch.matmul(q, k.transpose(-1, -2)) + torch.gather(rel, 3, (rel_index - lo).expand(B, H, T, T))
    logits = logits.float()  # the softmax is float32 (fairseq's utils.softmax)
    if scaling_for_att != 1.0:
        logits = logits * scaling_for_att
    if key_padding is not None:
        logits = logits.masked_fill(key_padding[:, None, None, :], float("-inf"))
    if scaling_for_att > 1.0:
        logits = logits - logits.detach().amax(dim=-1, keepdim=True)
    probs = attn.dropout_module(F.softmax(logits, dim=-1).to(v.dtype))
    out = torch.matmul(probs, v)  # (B,H,T,d)
    return attn.out_proj(out.permute(2, 0, 1, 3).reshape(T, B, C))


class RelPosEncoderLayer(TransformerSentenceEncoderLayer):
    """fairseq's wav2vec2 encoder layer with relative keys.

    ``forward(x (T,B,C), rel_keys (R,d), rel_index (T,T), key_padding (B,T) or None) -> (T,B,C)``.
    Pre-LN layers own a ``norm_k`` LayerNorm over the head dimension applied to the key table.
    """

    def __init__(self, *args, layer_norm_first: bool = False, scaling_for_att: float = 1.0, **kwargs):
        super().__init__(*args, layer_norm_first=layer_norm_first, **kwargs)
        self.norm_k = LayerNorm(self.embedding_dim // self.self_attn.num_heads) if layer_norm_first else None
        self.scaling_for_att = scaling_for_att

    def forward(self, x, rel_keys, rel_index, key_padding=None):
        residual = x
        if self.layer_norm_first:
            x = self.self_attn_layer_norm(x)
            x = relative_attention(self, x, self.norm_k(rel_keys), rel_index, key_padding, self.scaling_for_att)
            x = residual + self.dropout1(x)
            residual = x
            x = self.final_layer_norm(x)
            x = self.fc2(self.dropout2(self.activation_fn(self.fc1(x))))
            return residual + self.dropout3(x)
        x = relative_attention(self, x, rel_keys, rel_index, key_padding, self.scaling_for_att)
        x = self.self_attn_layer_norm(residual + self.dropout1(x))
        residual = x
        x = self.fc2(self.dropout2(self.activation_fn(self.fc1(x))))
        return self.final_layer_norm(residual + self.dropout3(x))


class RelPosTransformer(nn.Module):
    """A stack of ``num_layers`` relative-key layers.

    ``conv_pos > 0``: the Speech Transformer (conv positions; post-LN stacks normalise their input).
    ``absolute_positions``: the Shared Transformer (learned absolute positions + ``layernorm_embedding``).
    ``scaling_for_att``: the fp16 guard of every layer's attention (module docstring; 1 = off).
    Pre-LN stacks normalise their output (``layer_norm``) after the last layer.

    ``forward(x (B,T,C), padding_mask (B,T) bool or None, output_layer=None) -> (B,T,C)``;
    ``output_layer`` (1-based) stops after that layer (pre-LN: the final norm only after the last).
    ``return_all_hiddens=True`` returns ``(x, states)`` as fairseq's ``TransformerEncoder`` does:
    ``states`` = the input of the first layer then the output of each layer run, ``(T,B,C)`` each,
    before any final norm.
    """

    def __init__(
        self, num_layers: int, embed_dim: int, ffn_dim: int, num_heads: int, dropout: float,
        attention_dropout: float, activation_dropout: float, activation_fn: str,
        layer_norm_first: bool, layerdrop: float, conv_pos: int = 0, conv_pos_groups: int = 16,
        absolute_positions: bool = False, scaling_for_att: float = 1.0,
    ):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.layer_norm_first, self.layerdrop = layer_norm_first, layerdrop
        self.dropout = nn.Dropout(dropout)
        self.pos_conv = None
        if conv_pos > 0:
            # fairseq's make_conv_pos uses torch.nn.utils.weight_norm, deprecated in torch 2.x; its
            # weight_g/weight_v parameter names are what HuBERT and the released checkpoints hold, so
            # keep it and silence only that FutureWarning here.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*weight_norm.*", category=FutureWarning)
                self.pos_conv = make_conv_pos(embed_dim, conv_pos, conv_pos_groups)
        if absolute_positions:
            self.embed_positions = nn.Embedding(MAX_SHARED_POSITIONS + POSITION_PAD + 1, embed_dim,
                                                padding_idx=POSITION_PAD)
            nn.init.normal_(self.embed_positions.weight, mean=0, std=embed_dim ** -0.5)
            with torch.no_grad():
                self.embed_positions.weight[POSITION_PAD].zero_()
            self.layernorm_embedding = LayerNorm(embed_dim)
        else:
            self.embed_positions = self.layernorm_embedding = None
        self.relative_keys = nn.Embedding(2 * REL_POS_CLIP, embed_dim // num_heads)
        self.layers = nn.ModuleList(
            RelPosEncoderLayer(
                embedding_dim=embed_dim, ffn_embedding_dim=ffn_dim, num_attention_heads=num_heads,
                dropout=dropout, attention_dropout=attention_dropout,
                activation_dropout=activation_dropout, activation_fn=activation_fn,
                layer_norm_first=layer_norm_first, scaling_for_att=scaling_for_att,
            )
            for _ in range(num_layers)
        )
        # post-LN Speech Transformer: norm of its input; pre-LN stacks: norm of their output; the
        # post-LN Shared Transformer has none (its layernorm_embedding normalises the input)
        self.layer_norm = LayerNorm(embed_dim) if (layer_norm_first or not absolute_positions) else None

    def forward(self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, output_layer: Optional[int] = None,
                return_all_hiddens: bool = False):
        if padding_mask is not None and not padding_mask.any():
            padding_mask = None
        B, T, _ = x.shape
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        if self.pos_conv is not None:
            x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        if self.embed_positions is None and not self.layer_norm_first:
            x = self.layer_norm(x)
        if self.embed_positions is not None:
            x = x + self.embed_positions(shared_positions(padding_mask, B, T, x.device))
            x = self.layernorm_embedding(x)
        x = self.dropout(x)
        if self.embed_positions is not None and padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        rel_index = relative_index(T, x.device)
        x = x.transpose(0, 1)
        states = [x] if return_all_hiddens else None
        n = len(self.layers) if output_layer is None else output_layer
        drop = torch.rand(n) if self.training and self.layerdrop > 0 else None  # torch RNG: seeded per update
        for i, layer in enumerate(self.layers[:n]):
            if drop is not None and drop[i] < self.layerdrop:
                continue
            x = layer(x, self.relative_keys.weight, rel_index, padding_mask)
            if states is not None:
                states.append(x)
        x = x.transpose(0, 1)
        if self.layer_norm_first and n == len(self.layers):
            x = self.layer_norm(x)
        return x if states is None else (x, states)
