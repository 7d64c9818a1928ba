"""Model ``splat_spoken_qa``: speech-module outputs + the text question encoded by the language module
-> a randomly initialised Transformer (3 layers) -> start and end logits for every audio frame.

The joint sequence is [speech frames (projected to ``qa_embed_dim``, + sinusoidal positions);
the language module's outputs for the question tokens (projected to ``qa_embed_dim``; BERT has its own
positions)], each with a segment embedding; the heads read the speech positions only.

The language module (the task's ``bert_path``) is frozen by default: then it is kept out of the model's
parameters and state dict (never saved, never seen by the optimizer; a loaded checkpoint gets it again
from ``bert_path``), like the alignment task's. ``finetune_language_module=true`` makes it a trained
submodule, saved in the checkpoints.
"""
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules import SinusoidalPositionalEmbedding, TransformerSentenceEncoderLayer

from speechlm.models.splat_speech import SplatSpeechConfig, build_speech_module
from speechlm.modules.frozen import FrozenOutputCache, freeze


@dataclass
class SplatSpokenQaConfig(SplatSpeechConfig):
    qa_layers: int = field(default=3, metadata={"help": "layers of the QA Transformer"})
    qa_embed_dim: int = field(default=768, metadata={"help": "width of the QA Transformer"})
    qa_ffn_embed_dim: int = field(default=3072, metadata={"help": "its feed-forward width"})
    qa_attention_heads: int = field(default=12, metadata={"help": "its attention heads"})
    freeze_speech_module: bool = field(
        default=False, metadata={"help": "train only the QA Transformer (speech module stays as loaded)"}
    )
    finetune_language_module: bool = field(
        default=False,
        metadata={"help": "train the language module that encodes the question (default: frozen, unsaved)"},
    )


@register_model("splat_spoken_qa", dataclass=SplatSpokenQaConfig)
class SplatSpokenQaModel(BaseFairseqModel):
    def __init__(self, cfg: SplatSpokenQaConfig, speech, language_module: nn.Module, pad: int):
        super().__init__()
        self.cfg = cfg
        self.speech = speech
        E = cfg.qa_embed_dim
        self.pad = pad
        if cfg.finetune_language_module:
            self.language_module = language_module
        else:  # a plain attribute, not a submodule: frozen, outside parameters() and state_dict()
            object.__setattr__(self, "language_module", freeze(language_module))
            self.question_cache = FrozenOutputCache()  # each question is encoded once
        self.speech_proj = nn.Linear(speech.cfg.encoder_embed_dim, E)
        self.question_proj = nn.Linear(language_module.config.hidden_size, E)
        self.segment_embed = nn.Embedding(2, E)
        self.register_buffer(
            "positions", SinusoidalPositionalEmbedding.get_embedding(speech.cfg.max_positions, E),
            persistent=False,
        )
        self.embed_norm = nn.LayerNorm(E)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(
            TransformerSentenceEncoderLayer(
                embedding_dim=E, ffn_embedding_dim=cfg.qa_ffn_embed_dim,
                num_attention_heads=cfg.qa_attention_heads, dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout, activation_fn="gelu",
            )
            for _ in range(cfg.qa_layers)
        )
        self.span_head = nn.Linear(E, 2)
        if cfg.freeze_speech_module:
            for p in self.speech.parameters():
                p.requires_grad_(False)

    @classmethod
    def build_model(cls, cfg: SplatSpokenQaConfig, task):
        if not hasattr(task, "build_language_module"):
            raise ValueError("model splat_spoken_qa needs task spoken_qa")
        lm = task.build_language_module(frozen=not cfg.finetune_language_module)
        return cls(cfg, build_speech_module(cfg), lm, task.question_pad)

    def encode_question(self, question: torch.Tensor) -> torch.Tensor:
        """question (B, L) WordPiece ids, padded with the tokenizer's pad -> (B, L, H) language-module
        outputs (without gradient when the language module is frozen)."""
        lm = self.language_module
        mask = question.ne(self.pad).long()
        if self.cfg.finetune_language_module:
            return lm(input_ids=question, attention_mask=mask).last_hidden_state
        if next(lm.parameters()).device != question.device:
            lm.to(question.device)
        lm.eval()
        return self.question_cache(lm, question, self.pad)

    @property
    def frame_rate(self) -> float:
        return self.speech.frame_rate

    def forward(self, source, padding_mask=None, question=None):
        """-> dict: ``start_logits``/``end_logits`` (B, T') over speech frames, ``padding_mask`` (B, T')."""
        sp = self.speech(source, padding_mask)
        x_s = self.speech_proj(sp["encoder_out"])
        B, T, _ = x_s.shape
        s_pad = sp["padding_mask"]
        if s_pad is None:
            s_pad = torch.zeros(B, T, dtype=torch.bool, device=x_s.device)
        q_pad = question.eq(self.pad)
        x_s = x_s + self.positions[:T].to(x_s) + self.segment_embed.weight[0]
        x_q = self.question_proj(self.encode_question(question).to(x_s)) + self.segment_embed.weight[1]
        x = self.dropout(self.embed_norm(torch.cat([x_s, x_q], 1)))
        pad = torch.cat([s_pad, q_pad], 1)
        x = x.masked_fill(pad[:, :, None], 0.0).transpose(0, 1)
        for layer in self.layers:
            x, _ = layer(x, self_attn_padding_mask=pad)
        logits = self.span_head(x.transpose(0, 1)[:, :T]).float()
        logits = logits.masked_fill(s_pad[:, :, None], float("-inf"))
        return {"start_logits": logits[..., 0], "end_logits": logits[..., 1], "padding_mask": s_pad}
