"""fairseq's Transformer decoder with the published SpeechLM ST decoder's relative position keys.

The released speech-translation models (``speechlm_st_legacy``) add to each decoder self-attention
logit ``q_i . r[clip(i - j)]`` with one table ``relative_keys`` of ``2 * 24`` vectors of the head
dimension (distance clipped to [-24, 23]), on top of fairseq's sinusoidal positions; post-LN layers.
Everything else is fairseq's ``TransformerDecoder`` (same parameters and state-dict keys, plus
``relative_keys``); only the self-attention module is a subclass, which keeps fairseq's incremental
state layout (``prev_key``/``prev_value`` as (B, H, S, d)), so beam search reorders it unchanged.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.models.transformer import TransformerConfig, TransformerDecoder
from fairseq.modules import MultiheadAttention
from fairseq.modules.transformer_layer import TransformerDecoderLayerBase

DECODER_REL_POS_CLIP = 24  # the published ST decoder's maxlen


class _Table:
    """Holds the decoder's key table for its layers (a plain object: no duplicate parameters)."""

    weight: Optional[torch.Tensor] = None


class RelPosSelfAttention(MultiheadAttention):
    """Causal self-attention with relative keys; ``forward`` takes fairseq's arguments."""

    def __init__(self, *args, table: _Table, **kwargs):
        super().__init__(*args, **kwargs)
        self.table = table

    def forward(self, query, key=None, value=None, key_padding_mask=None, incremental_state=None,
                need_weights=False, static_kv=False, attn_mask=None, before_softmax=False,
                need_head_weights=False):
        T, B, C = query.shape
        H, d = self.num_heads, self.head_dim
        q = (self.q_proj(query) * self.scaling).view(T, B * H, d).transpose(0, 1)  # (BH,T,d)
        k = self.k_proj(query).view(T, B * H, d).transpose(0, 1)
        v = self.v_proj(query).view(T, B * H, d).transpose(0, 1)
        if incremental_state is not None:
            saved = self._get_input_buffer(incremental_state)
            if "prev_key" in saved:
                k = torch.cat([saved["prev_key"].view(B * H, -1, d), k], dim=1)
                v = torch.cat([saved["prev_value"].view(B * H, -1, d), v], dim=1)
            saved["prev_key"] = k.view(B, H, -1, d)
            saved["prev_value"] = v.view(B, H, -1, d)
            saved["prev_key_padding_mask"] = None
            self._set_input_buffer(incremental_state, saved)
        S = k.size(1)
        logits = torch.bmm(q, k.transpose(1, 2))  # (BH,T,S)
        qpos = torch.arange(S - T, S, device=q.device)
        idx = (qpos[:, None] - torch.arange(S, device=q.device)[None, :]).clamp(
            -DECODER_REL_POS_CLIP, DECODER_REL_POS_CLIP - 1) + DECODER_REL_POS_CLIP
        rel = torch.matmul(q, self.table.weight.to(q.dtype).t())  # (BH,T,R)
        logits = logits + torch.gather(rel, 2, idx.expand(B * H, T, S))
        if attn_mask is not None:
            logits = logits + attn_mask.unsqueeze(0)
        if key_padding_mask is not None and incremental_state is None:
            logits = logits.view(B, H, T, S).masked_fill(key_padding_mask[:, None, None, :].bool(), float("-inf"))
            logits = logits.view(B * H, T, S)
        probs = self.dropout_module(F.softmax(logits.float(), dim=-1).type_as(logits))
        out = torch.bmm(probs, v).transpose(0, 1).reshape(T, B, C)
        return self.out_proj(out), None


class RelPosDecoderLayer(TransformerDecoderLayerBase):
    def __init__(self, cfg, no_encoder_attn=False, table: _Table = None):
        self._table = table
        super().__init__(cfg, no_encoder_attn)

    def build_self_attention(self, embed_dim, cfg, add_bias_kv=False, add_zero_attn=False):
        return RelPosSelfAttention(
            embed_dim, cfg.decoder.attention_heads, dropout=cfg.attention_dropout, self_attention=True,
            q_noise=self.quant_noise, qn_block_size=self.quant_noise_block_size, table=self._table,
        )


class RelPosTransformerDecoder(TransformerDecoder):
    """``TransformerDecoder(args, dictionary, embed_tokens)`` plus ``relative_keys`` (48 x head_dim)."""

    def __init__(self, args, dictionary, embed_tokens, **kwargs):
        if getattr(args, "decoder_normalize_before", False):
            raise ValueError("speechlm_st: the relative-key decoder is post-LN (decoder_normalize_before: false), "
                             "as the released models")
        self.__dict__["_table"] = _Table()
        super().__init__(args, dictionary, embed_tokens, **kwargs)
        head_dim = args.decoder_embed_dim // args.decoder_attention_heads
        self.relative_keys = nn.Embedding(2 * DECODER_REL_POS_CLIP, head_dim)
        nn.init.normal_(self.relative_keys.weight, std=head_dim ** -0.5)

    def build_decoder_layer(self, args, no_encoder_attn=False):
        return RelPosDecoderLayer(TransformerConfig.from_namespace(args), no_encoder_attn, table=self.__dict__["_table"])

    def extract_features_scriptable(self, prev_output_tokens, encoder_out: Optional[Dict] = None,
                                    incremental_state=None, full_context_alignment=False,
                                    alignment_layer=None, alignment_heads=None):
        self.__dict__["_table"].weight = self.relative_keys.weight
        return super().extract_features_scriptable(
            prev_output_tokens, encoder_out, incremental_state, full_context_alignment,
            alignment_layer, alignment_heads,
        )
