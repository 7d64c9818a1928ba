"""Speech translation with a pre-trained SpeechLM encoder (model ``speechlm_st``).

    raw 16 kHz waveform -> pre-trained SpeechLM encoder (conv front end, Speech + Shared Transformer)
        -> randomly initialised Transformer decoder (6 post-LN layers, fairseq's with the published
           model's relative position keys) -> target characters

Trained and decoded on fairseq's own ``speech_to_text`` task with raw audio input
(``use_audio_input: true`` in the data's ``config.yaml``, written by ``speechlm st prepare``):

    fairseq-hydra-train --config-dir examples/mini/config/st --config-name speechlm_st_tiny \\
        common.user_dir=speechlm task.data=ST_DATA model.w2v_path=PRETRAINED.pt checkpoint.save_dir=DIR
    fairseq-generate ST_DATA --user-dir speechlm --task speech_to_text --path DIR/checkpoint_best.pt \\
        --gen-subset test --beam 5 --max-tokens 20000 --scoring sacrebleu

As with ``speechlm_ctc``, the pre-trained model's config is saved in the fine-tuned checkpoint
(``pretrained_spec``), so ``fairseq-generate`` needs only the fine-tuned file.
"""
import argparse
from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from fairseq.models import FairseqEncoder, FairseqEncoderDecoderModel, register_model
from fairseq.models.transformer import Embedding
from fairseq.models.transformer.transformer_legacy import base_architecture

from speechlm.models.speechlm_ctc import SpeechLMEncoder, SpeechLMEncoderConfig
from speechlm.modules.relpos_decoder import RelPosTransformerDecoder


@dataclass
class SpeechLMSTConfig(SpeechLMEncoderConfig):
    decoder_layers: int = field(default=6, metadata={"help": "Transformer decoder layers"})
    decoder_embed_dim: int = field(default=768, metadata={"help": "decoder dimension"})
    decoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "decoder feed-forward dim"})
    decoder_attention_heads: int = field(default=12, metadata={"help": "decoder attention heads"})
    decoder_normalize_before: bool = field(
        default=False, metadata={"help": "pre-LN decoder layers (the relative-key decoder is post-LN, as released)"}
    )
    decoder_learned_pos: bool = field(
        default=False, metadata={"help": "learned (else sinusoidal) decoder positions"}
    )
    decoder_dropout: float = field(default=0.0, metadata={"help": "dropout in the decoder"})
    decoder_attention_dropout: float = field(
        default=0.1, metadata={"help": "dropout on the decoder's attention weights"}
    )
    decoder_activation_dropout: float = field(
        default=0.0, metadata={"help": "dropout after the decoder's FFN activation"}
    )
    decoder_layerdrop: float = field(default=0.0, metadata={"help": "decoder LayerDrop"})
    decoder_activation_fn: str = field(default="gelu", metadata={"help": "decoder FFN activation (released: gelu)"})
    share_decoder_input_output_embed: bool = field(
        default=False, metadata={"help": "tie the decoder's input embedding and output projection "
                                         "(released models: untied)"}
    )
    max_target_positions: int = field(
        default=1024, metadata={"help": "longest target (characters) the decoder's positions cover"}
    )
    # set by fairseq's speech_to_text task in build_model; not used with raw audio input
    input_feat_per_channel: Optional[int] = field(
        default=None, metadata={"help": "set by the speech_to_text task (unused: raw audio input)"}
    )
    input_channels: Optional[int] = field(
        default=None, metadata={"help": "set by the speech_to_text task (unused: raw audio input)"}
    )
    speaker_to_id: Any = field(
        default=None, metadata={"help": "set by the speech_to_text task (unused)"}
    )


class SpeechLMSTEncoder(FairseqEncoder):
    """``forward(src_tokens (B,S) raw audio, src_lengths (B,) samples)`` -> fairseq's encoder-out
    dict: ``encoder_out`` [(T,B,D)], ``encoder_padding_mask`` [(B,T)] or [] (50 Hz frames)."""

    def __init__(self, cfg: SpeechLMSTConfig):
        super().__init__(None)
        self.speech = SpeechLMEncoder(cfg)
        self.speech.uctc = self.speech.pretrained_state = None  # ST has no use for the UCTC head
        self.embed_dim = self.speech.embed_dim

    def forward(self, src_tokens, src_lengths, **kwargs):
        S = src_tokens.size(1)
        padding_mask = torch.arange(S, device=src_tokens.device)[None, :] >= src_lengths[:, None]
        out = self.speech(src_tokens, padding_mask if padding_mask.any() else None)
        pad = out["padding_mask"]
        return {
            "encoder_out": [out["encoder_out"]],
            "encoder_padding_mask": [] if pad is None else [pad],
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [],
        }

    def reorder_encoder_out(self, encoder_out, new_order):
        return {
            "encoder_out": [x.index_select(1, new_order) for x in encoder_out["encoder_out"]],
            "encoder_padding_mask": [
                x.index_select(0, new_order) for x in encoder_out["encoder_padding_mask"]
            ],
            "encoder_embedding": [],
            "encoder_states": [],
            "src_tokens": [],
            "src_lengths": [],
        }

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.speech.set_num_updates(num_updates)

    def max_positions(self):
        return None


def decoder_args(cfg: SpeechLMSTConfig, encoder_dim: int) -> argparse.Namespace:
    """fairseq Transformer decoder arguments (its legacy names) from our config."""
    ns = argparse.Namespace(
        encoder_embed_dim=encoder_dim,
        decoder_embed_dim=cfg.decoder_embed_dim,
        decoder_ffn_embed_dim=cfg.decoder_ffn_embed_dim,
        decoder_layers=cfg.decoder_layers,
        decoder_attention_heads=cfg.decoder_attention_heads,
        decoder_normalize_before=cfg.decoder_normalize_before,
        decoder_learned_pos=cfg.decoder_learned_pos,
        decoder_layerdrop=cfg.decoder_layerdrop,
        dropout=cfg.decoder_dropout,
        attention_dropout=cfg.decoder_attention_dropout,
        activation_dropout=cfg.decoder_activation_dropout,
        activation_fn=cfg.decoder_activation_fn,
        share_decoder_input_output_embed=cfg.share_decoder_input_output_embed,
        max_target_positions=cfg.max_target_positions,
    )
    base_architecture(ns)  # fairseq's defaults for everything not set above
    return ns


@register_model("speechlm_st", dataclass=SpeechLMSTConfig)
class SpeechLMST(FairseqEncoderDecoderModel):
    @classmethod
    def build_model(cls, cfg: SpeechLMSTConfig, task):
        from speechlm.models.speechlm_ctc import bind_target_symbols

        bind_target_symbols(cfg, task)
        encoder = SpeechLMSTEncoder(cfg)
        tgt = task.target_dictionary
        args = decoder_args(cfg, encoder.embed_dim)
        embed = Embedding(len(tgt), cfg.decoder_embed_dim, tgt.pad())
        decoder = RelPosTransformerDecoder(args, tgt, embed)
        return cls(encoder, decoder)

    def max_positions(self):
        return (None, self.decoder.max_positions())

    def prepare_for_inference_(self, cfg):
        """``fairseq-generate --bf16`` decodes in bfloat16 (fairseq's generate casts only for ``--fp16``)."""
        super().prepare_for_inference_(cfg)
        common = getattr(cfg, "common", None)
        if common is not None and getattr(common, "bf16", False) and not getattr(common, "fp16", False):
            self.bfloat16()
