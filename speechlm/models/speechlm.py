"""SpeechLM (Zhang et al., 2022): one encoder for speech and for text in a shared unit space.

    waveform -> fairseq conv front end -> LayerNorm -> Linear(512, D) --[span mask]--> Speech Transformer
      (L/2 layers, conv + relative positions) --[random swapping]--> Shared Transformer (L/2 layers)
    units (text) -> unit embedding --[span mask]--> Shared Transformer -> UCTC head (Conv1d k=2, Linear)

UMLM: at the masked frames, logits over the unit vocabulary are cos(W_l h, e(z)) / tau at the outputs
of both transformers (l = 0, 1), with ``e`` the one unit embedding that the text branch and the random
swapping use too. Random swapping replaces, with probability ``random_swap_prob``, an *unmasked*
speech frame's Speech-Transformer output by e(its unit) before the Shared Transformer.
"""
import logging
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.data import Dictionary
from fairseq.data.data_utils import compute_mask_indices
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules import GradMultiply, LayerNorm

from speechlm.errors import UserError
from speechlm.modules.conv_frontend import MaskedConvFeatureExtractor, conv_output_lengths, parse_conv_layers
from speechlm.modules.relpos_transformer import RelPosTransformer

logger = logging.getLogger(__name__)

EXTRACTOR_MODE_CHOICES = ChoiceEnum(["default", "layer_norm"])
MASK_TYPE_CHOICES = ChoiceEnum(["static", "uniform", "normal", "poisson"])
# The Base conv front end: 25 ms receptive field, 320-sample (20 ms) stride -> 50 Hz frames.
BASE_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"


@dataclass
class SpeechLMConfig(FairseqDataclass):
    extractor_mode: EXTRACTOR_MODE_CHOICES = field(
        default="default",
        metadata={"help": "conv front end norm: 'default' = group norm in the first layer (Base), "
                  "'layer_norm' = layer norm in every layer (Large)"},
    )
    conv_feature_layers: str = field(
        default=BASE_CONV_LAYERS, metadata={"help": "conv front end as a list of (dim, kernel, stride)"}
    )
    conv_bias: bool = field(default=False, metadata={"help": "bias in the front-end convolutions"})
    encoder_embed_dim: int = field(default=768, metadata={"help": "model dimension D"})
    encoder_ffn_embed_dim: int = field(default=3072, metadata={"help": "feed-forward dimension"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads"})
    speech_encoder_layers: int = field(default=6, metadata={"help": "layers of the Speech Transformer (L/2)"})
    shared_encoder_layers: int = field(default=6, metadata={"help": "layers of the Shared Transformer (L/2)"})
    activation_fn: str = field(default="gelu", metadata={"help": "feed-forward activation"})
    layer_norm_first: bool = field(default=False, metadata={"help": "pre-LN layers (Large) instead of post-LN"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the transformer layers"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_layerdrop: float = field(default=0.05, metadata={"help": "probability of skipping a layer in training"})
    dropout_input: float = field(default=0.1, metadata={"help": "dropout on the projected speech features"})
    dropout_features: float = field(default=0.1, metadata={"help": "dropout on the front-end features"})
    feature_grad_mult: float = field(default=0.1, metadata={"help": "gradient scale into the front end (0 freezes it)"})
    conv_pos: int = field(default=128, metadata={"help": "kernel of the Speech Transformer's conv positions (0: none)"})
    conv_pos_groups: int = field(default=16, metadata={"help": "groups of the conv positions"})
    num_buckets: int = field(default=320, metadata={"help": "relative position buckets"})
    max_distance: int = field(default=800, metadata={"help": "relative distance (frames) of the last bucket"})
    mask_prob: float = field(default=0.8, metadata={"help": "HuBERT mask_prob: share of frames that start a span"})
    mask_length: int = field(default=10, metadata={"help": "mask span length (frames)"})
    mask_selection: MASK_TYPE_CHOICES = field(default="static", metadata={"help": "how span lengths are chosen"})
    mask_other: float = field(default=0.0, metadata={"help": "secondary span-length parameter (non-static)"})
    no_mask_overlap: bool = field(default=False, metadata={"help": "forbid overlapping spans"})
    mask_min_space: int = field(default=1, metadata={"help": "min gap between spans with no_mask_overlap"})
    text_mask_prob: Optional[float] = field(
        default=None, metadata={"help": "mask_prob for the text units (None: same as speech)"}
    )
    logit_temp: float = field(default=0.1, metadata={"help": "tau of the UMLM logits cos(W h, e(z)) / tau"})
    random_swap_prob: float = field(
        default=0.3, metadata={"help": "probability to swap an unmasked frame's output for its unit embedding (0: off)"}
    )
    uctc_conv_kernel: int = field(default=2, metadata={"help": "kernel of the UCTC head's 1-D conv"})
    uctc_conv_stride: int = field(default=2, metadata={"help": "stride of the UCTC head's 1-D conv"})


def _padding_mask_from_lengths(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return torch.arange(max_len, device=lengths.device)[None, :] >= lengths[:, None]


@register_model("speechlm", dataclass=SpeechLMConfig)
class SpeechLMModel(BaseFairseqModel):
    """Build with ``SpeechLMModel(cfg, num_units, unit_pad, num_letters)`` or through the task.

    ``num_letters`` = 0 builds no UCTC head (speech-only pre-training).
    """

    def __init__(self, cfg: SpeechLMConfig, num_units: int, unit_pad: int, num_letters: int = 0):
        super().__init__()
        self.cfg = cfg
        D = cfg.encoder_embed_dim
        conv_layers = parse_conv_layers(cfg.conv_feature_layers)
        self.conv_layers = conv_layers
        self.feature_extractor = MaskedConvFeatureExtractor(
            conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
        )
        feat_dim = conv_layers[-1][0]
        self.layer_norm = LayerNorm(feat_dim)
        self.post_extract_proj = nn.Linear(feat_dim, D) if feat_dim != D else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.mask_emb = nn.Parameter(torch.empty(D).uniform_())

        def stack(n, conv_pos):
            return RelPosTransformer(
                n, D, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, cfg.dropout,
                cfg.attention_dropout, cfg.activation_dropout, cfg.activation_fn,
                cfg.layer_norm_first, cfg.encoder_layerdrop, cfg.num_buckets, cfg.max_distance,
                conv_pos=conv_pos, conv_pos_groups=cfg.conv_pos_groups,
            )

        self.speech_encoder = stack(cfg.speech_encoder_layers, cfg.conv_pos)
        self.shared_encoder = stack(cfg.shared_encoder_layers, 0)

        self.num_units, self.unit_pad = num_units, unit_pad
        self.unit_embed = nn.Embedding(num_units, D, padding_idx=unit_pad)
        nn.init.normal_(self.unit_embed.weight, mean=0, std=D ** -0.5)
        with torch.no_grad():
            self.unit_embed.weight[unit_pad].zero_()
        # one W per UMLM layer: 0 = Speech Transformer output, 1 = Shared Transformer output
        self.umlm_proj = nn.ModuleList(nn.Linear(D, D) for _ in range(2))

        self.num_letters = num_letters
        if num_letters > 0:
            self.uctc_conv = nn.Conv1d(D, D, cfg.uctc_conv_kernel, stride=cfg.uctc_conv_stride)
            self.uctc_proj = nn.Linear(D, num_letters)
        else:
            self.uctc_conv = self.uctc_proj = None

    @classmethod
    def build_model(cls, cfg: SpeechLMConfig, task):
        units = task.unit_dictionary
        letters = getattr(task, "letter_dictionary", None)
        return cls(cfg, len(units), units.pad(), len(letters) if letters is not None else 0)

    @classmethod
    def from_checkpoint(cls, path: str, arg_overrides: Optional[Dict] = None) -> "SpeechLMModel":
        """The pre-trained model saved in a fairseq checkpoint, without the task's data on disk.

        Vocabulary sizes come from the saved tensors; raises ``ValueError`` naming the file if the
        checkpoint was not written by the ``speechlm`` model.
        """
        from fairseq import checkpoint_utils
        from omegaconf import OmegaConf

        state = checkpoint_utils.load_checkpoint_to_cpu(path, arg_overrides)
        cfg = state.get("cfg")
        if cfg is None or cfg.get("model") is None or cfg["model"].get("_name") != "speechlm":
            name = None if cfg is None or cfg.get("model") is None else cfg["model"].get("_name")
            raise UserError(f"{path}: is a checkpoint of model {name!r}, not 'speechlm'")
        model_cfg = OmegaConf.merge(OmegaConf.structured(SpeechLMConfig), {
            k: v for k, v in OmegaConf.to_container(cfg["model"]).items() if k != "_name"
        })
        if arg_overrides:
            model_cfg = OmegaConf.merge(model_cfg, {k: v for k, v in arg_overrides.items() if k in model_cfg})
        sd = state["model"]
        num_letters = sd["uctc_proj.weight"].shape[0] if "uctc_proj.weight" in sd else 0
        pad = Dictionary().pad()  # every fairseq Dictionary puts <pad> at the same index
        model = cls(model_cfg, sd["unit_embed.weight"].shape[0], pad, num_letters)
        model.load_state_dict(sd, strict=True)
        return model

    # ------------------------------------------------------------------ speech
    def _speech_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        """Front end + LayerNorm + projection: ``(B,S) -> (B,T,D), frame padding mask (B,T) or None``."""
        lengths = None
        if padding_mask is not None and padding_mask.any():
            lengths = (~padding_mask).long().sum(-1)
        if self.cfg.feature_grad_mult > 0:
            feats = self.feature_extractor(source, lengths)
            if self.cfg.feature_grad_mult != 1.0:
                feats = GradMultiply.apply(feats, self.cfg.feature_grad_mult)
        else:
            with torch.no_grad():
                feats = self.feature_extractor(source, lengths)
        feats = self.layer_norm(feats.transpose(1, 2))
        frame_padding = None
        if lengths is not None:
            frame_padding = _padding_mask_from_lengths(conv_output_lengths(lengths, self.conv_layers), feats.size(1))
        if self.post_extract_proj is not None:
            feats = self.post_extract_proj(feats)
        return feats, frame_padding

    def _span_mask(self, B: int, T: int, padding_mask: Optional[torch.Tensor], mask_prob: float, device):
        mask = compute_mask_indices(
            (B, T), padding_mask, mask_prob, self.cfg.mask_length, self.cfg.mask_selection,
            self.cfg.mask_other, min_masks=2, no_overlap=self.cfg.no_mask_overlap,
            min_space=self.cfg.mask_min_space, require_same_masks=False,
        )
        mask = torch.from_numpy(mask).to(device)
        if padding_mask is not None:
            mask = mask & ~padding_mask
        return mask

    def swap_positions(self, mask_indices: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Frames to swap for their unit embedding: Bernoulli(random_swap_prob) at unmasked real frames."""
        swap = torch.rand(mask_indices.shape, device=mask_indices.device) < self.cfg.random_swap_prob
        swap &= ~mask_indices
        if padding_mask is not None:
            swap &= ~padding_mask
        return swap

    def umlm_logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """``h (N, D) -> (N, num_units)`` logits cos(W_layer h, e(z)) / tau for every unit z."""
        q = F.normalize(self.umlm_proj[layer](h).float(), dim=-1)
        e = F.normalize(self.unit_embed.weight.float(), dim=-1)
        logits = (q @ e.t()) / self.cfg.logit_temp
        # <pad>'s embedding is all zeros (no direction): it is never a target, so it gets -inf
        # (which also keeps the 1/eps gradient of normalising a zero vector out of training)
        is_pad = torch.zeros(logits.size(-1), dtype=torch.bool, device=logits.device)
        is_pad[self.unit_pad] = True
        return logits.masked_fill(is_pad, float("-inf"))

    def forward(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
        target: Optional[torch.Tensor] = None, mask: bool = True,
    ) -> Dict[str, torch.Tensor]:
        """Speech pre-training pass.

        ``source`` (B,S) waveform, ``padding_mask`` (B,S) True at padding, ``target`` (B,T) frame units
        (T = conv frames; pad index beyond each utterance). Returns ``umlm_logits``: a list of two
        (N, num_units) tensors at the N masked frames, ``umlm_targets`` (N,), ``mask_indices`` (B,T),
        ``swap_indices`` (B,T), ``padding_mask`` (B,T) or None.
        """
        x, frame_padding = self._speech_features(source, padding_mask)
        B, T, _ = x.shape
        if target is not None and target.size(1) != T:
            raise ValueError(
                f"speech batch: targets have {target.size(1)} frames but the front end made {T}; "
                "labels must be one per 20 ms frame (see SpeechLabelDataset)"
            )
        x = self.dropout_input(x)
        if mask:
            mask_indices = self._span_mask(B, T, frame_padding, self.cfg.mask_prob, x.device)
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        else:
            mask_indices = torch.zeros(B, T, dtype=torch.bool, device=x.device)
        h_speech = self.speech_encoder(x, frame_padding)

        swap = torch.zeros_like(mask_indices)
        if self.training and self.cfg.random_swap_prob > 0 and target is not None:
            swap = self.swap_positions(mask_indices, frame_padding)
            h_mixed = torch.where(swap.unsqueeze(-1), self.unit_embed(target).to(h_speech.dtype), h_speech)
        else:
            h_mixed = h_speech
        h_shared = self.shared_encoder(h_mixed, frame_padding)

        out = {"mask_indices": mask_indices, "swap_indices": swap, "padding_mask": frame_padding}
        out["umlm_logits"] = [
            self.umlm_logits(h_speech[mask_indices], 0),
            self.umlm_logits(h_shared[mask_indices], 1),
        ]
        if target is not None:
            out["umlm_targets"] = target[mask_indices]
        return out

    def extract_features(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, output_layer: Optional[int] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Speech representations, no masking: ``(B,S) -> features (B,T,D), padding_mask (B,T) or None``.

        ``output_layer`` counts all L layers from 1 (1..L/2 stop in the Speech Transformer); None = L.
        """
        x, frame_padding = self._speech_features(source, padding_mask)
        n_speech = len(self.speech_encoder.layers)
        if output_layer is not None and not 1 <= output_layer <= n_speech + len(self.shared_encoder.layers):
            raise ValueError(f"output_layer={output_layer} outside 1..{n_speech + len(self.shared_encoder.layers)}")
        if output_layer is not None and output_layer <= n_speech:
            return self.speech_encoder(x, frame_padding, output_layer), frame_padding
        x = self.speech_encoder(x, frame_padding)
        shared_layer = None if output_layer is None else output_layer - n_speech
        return self.shared_encoder(x, frame_padding, shared_layer), frame_padding

    # ------------------------------------------------------------------ text
    def forward_text(self, units: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask: bool = True):
        """Text pre-training pass: ``units`` (B,T) upsampled unit ids, ``padding_mask`` (B,T).

        Returns ``uctc_logits`` (B,T',letters) and ``uctc_lengths`` (B,), T' after the head's conv.
        """
        if self.uctc_proj is None:
            raise RuntimeError("this SpeechLM model has no UCTC head (built without a letter dictionary)")
        x = self.unit_embed(units)
        if mask:
            mask_prob = self.cfg.mask_prob if self.cfg.text_mask_prob is None else self.cfg.text_mask_prob
            mask_indices = self._span_mask(x.size(0), x.size(1), padding_mask, mask_prob, x.device)
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        h = self.shared_encoder(x, padding_mask)
        if padding_mask is not None:
            h = h.masked_fill(padding_mask.unsqueeze(-1), 0.0)
            lengths = (~padding_mask).long().sum(-1)
        else:
            lengths = torch.full((h.size(0),), h.size(1), dtype=torch.long, device=h.device)
        y = self.uctc_conv(h.transpose(1, 2)).transpose(1, 2)
        k, s = self.cfg.uctc_conv_kernel, self.cfg.uctc_conv_stride
        out_lengths = (torch.div(lengths - k, s, rounding_mode="floor") + 1).clamp(min=0)
        return {"uctc_logits": self.uctc_proj(y), "uctc_lengths": out_lengths}

    def extract_text_features(
        self, units: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, output_layer: Optional[int] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Text representations, no masking: units (B,T) -> features (B,T,D), padding_mask.

        ``output_layer`` counts the Shared Transformer's layers from 1; None = its last layer.
        """
        if output_layer is not None and not 1 <= output_layer <= len(self.shared_encoder.layers):
            raise ValueError(f"output_layer={output_layer} outside 1..{len(self.shared_encoder.layers)}")
        return self.shared_encoder(self.unit_embed(units), padding_mask, output_layer), padding_mask

    def speech_encoder_parameters(self) -> int:
        """Parameters of the speech encoder: front end, projection, mask embedding and all L layers."""
        skip = ("unit_embed.", "umlm_proj.", "uctc_conv.", "uctc_proj.")
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith(skip))
