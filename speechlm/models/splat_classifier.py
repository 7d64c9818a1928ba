"""Model ``splat_classifier``: the SPLAT speech module + an MLP (one hidden layer of 512) on s1."""
from dataclasses import dataclass, field

import torch.nn as nn
from fairseq.models import BaseFairseqModel, register_model

from speechlm.models.splat_speech import SplatSpeechConfig, build_speech_module


@dataclass
class SplatClassifierConfig(SplatSpeechConfig):
    classifier_hidden_dim: int = field(default=512, metadata={"help": "hidden width of the MLP on s1"})
    classifier_dropout: float = field(default=0.1, metadata={"help": "dropout inside the MLP"})
    freeze_speech_module: bool = field(
        default=False, metadata={"help": "train only the classifier (the speech module stays as loaded)"}
    )


@register_model("splat_classifier", dataclass=SplatClassifierConfig)
class SplatClassifierModel(BaseFairseqModel):
    def __init__(self, cfg: SplatClassifierConfig, speech, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.speech = speech
        D = speech.cfg.encoder_embed_dim
        self.classifier = nn.Sequential(
            nn.Dropout(cfg.classifier_dropout),
            nn.Linear(D, cfg.classifier_hidden_dim),
            nn.ReLU(),
            nn.Dropout(cfg.classifier_dropout),
            nn.Linear(cfg.classifier_hidden_dim, num_classes),
        )
        if cfg.freeze_speech_module:
            for p in self.speech.parameters():
                p.requires_grad_(False)

    @classmethod
    def build_model(cls, cfg: SplatClassifierConfig, task):
        if not hasattr(task, "num_classes"):
            raise ValueError("model splat_classifier needs task slu_classification")
        return cls(cfg, build_speech_module(cfg), task.num_classes)

    def forward(self, source, padding_mask=None):
        """-> logits (B, num_classes) from s1."""
        s1 = self.speech(source, padding_mask)["encoder_out"][:, 0]
        return self.classifier(s1)
