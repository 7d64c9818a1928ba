"""SpeechLM (Zhang et al., 2022): one encoder for speech and for text in a shared unit space.

The published architecture (microsoft/unilm ``speechlm/``; the released checkpoints convert one to
one with ``speechlm convert``):

    waveform -> fairseq conv front end -> LayerNorm -> Linear(512, D) --[span mask]--> Speech Transformer
      (L/2 layers, conv positions + relative keys) --[random swapping]--> Shared Transformer (L/2 layers,
      learned absolute positions + layernorm_embedding + relative keys)
    units (text) -> unit embedding --[span mask]--> Shared Transformer -> UCTC head (50 Hz) -> letters

UMLM: at the masked frames, logits over the units are cos(W_l h, e_l(z)) / tau at the outputs of both
transformers (l = 0, 1), W_l: D -> ``final_dim`` (256) and e_l one label-embedding table per output.
Random swapping: spans (``random_swap_prob`` 0.4, ``random_swap_length`` 5 frames) are drawn as span
masks are, and their *unmasked* frames' Speech-Transformer outputs become the unit embedding of
their unit before the Shared Transformer. Masks and swaps draw from generators seeded from torch's
RNG (as layerdrop and dropout do), which the ``speechlm_pretraining`` task seeds with (``common.seed``,
update, rank, micro-batch) at every training step: ranks draw differently, a rerun draws the same.
"""
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.data.data_utils import compute_mask_indices
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.modules import GradMultiply, LayerNorm

from speechlm.checkpoint import read_checkpoint, store_in_saved_config
from speechlm.errors import UserError
from speechlm.models.pretrained import PretrainedSpec
from speechlm.modules.conv_frontend import MaskedConvFeatureExtractor, parse_conv_layers
from speechlm.modules.logmel_frontend import LogMelFrontEnd
from speechlm.modules.relpos_transformer import RelPosTransformer
from speechlm.modules.uctc_head import UCTCHead

EXTRACTOR_MODE_CHOICES = ChoiceEnum(["default", "layer_norm"])
FRONTEND_CHOICES = ChoiceEnum(["conv", "logmel"])
MASK_TYPE_CHOICES = ChoiceEnum(["static", "uniform", "normal", "poisson"])
# The Base conv front end: 25 ms receptive field, 320-sample (20 ms) stride -> 50 Hz frames.
BASE_CONV_LAYERS = "[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2"
# Streams of the seeded span draws (the ``epoch`` of fairseq's compute_mask_indices seeding)
MASK_STREAM, SWAP_STREAM, TEXT_MASK_STREAM = 0, 1, 2
# Modules only pre-training needs; ``remove_pretraining_modules`` drops them (a CTC fine-tuning that starts
# from the UCTC head takes it before)
PRETRAINING_MODULES = ("unit_embed", "umlm_proj", "umlm_label_embs", "uctc_head")
# What the released cleaned checkpoints (the published README's "Extract features") removed, in the
# published code's names and ours: they cannot continue pre-training
RELEASE_REMOVED = ("the unit embedding (unit_embed_tokens -> unit_embed), the UMLM label embeddings "
                   "(label_embs_list -> umlm_label_embs) and the UCTC head (unit_encoder_ctc_head -> uctc_head)")


@dataclass
class SpeechLMConfig(FairseqDataclass):
    frontend: FRONTEND_CHOICES = field(
        default="conv",
        metadata={"help": "'conv': the published raw-waveform conv front end (conv_feature_layers); 'logmel': "
                  "80 log-Mel at 100 Hz + one stride-2 conv to encoder_embed_dim (cheap, for small CPU models)"},
    )
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
    encoder_attention_heads: int = field(default=8, metadata={"help": "attention heads (released Base: 8)"})
    speech_encoder_layers: int = field(default=6, metadata={"help": "layers of the Speech Transformer (L/2)"})
    shared_encoder_layers: int = field(default=6, metadata={"help": "layers of the Shared Transformer (L/2)"})
    activation_fn: str = field(default="gelu", metadata={"help": "feed-forward activation"})
    layer_norm_first: bool = field(default=False, metadata={"help": "pre-LN layers (Large) instead of post-LN"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the transformer layers"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention weights"})
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout after the FFN activation"})
    encoder_layerdrop: float = field(default=0.1, metadata={"help": "probability of skipping a layer in training"})
    dropout_input: float = field(default=0.1, metadata={"help": "dropout on the projected speech features"})
    feature_grad_mult: float = field(default=0.1, metadata={"help": "gradient scale into the front end (0 freezes it)"})
    conv_pos: int = field(default=128, metadata={"help": "kernel of the Speech Transformer's conv positions"})
    conv_pos_groups: int = field(default=16, metadata={"help": "groups of the conv positions"})
    final_dim: int = field(default=256, metadata={"help": "dimension of the UMLM projection and label embeddings"})
    mask_prob: float = field(default=0.8, metadata={"help": "HuBERT mask_prob: share of frames that start a span"})
    mask_length: int = field(default=10, metadata={"help": "mask span length (frames)"})
    mask_selection: MASK_TYPE_CHOICES = field(default="static", metadata={"help": "how span lengths are chosen"})
    mask_other: float = field(default=0.0, metadata={"help": "secondary span-length parameter (non-static)"})
    mask_min_space: int = field(default=1, metadata={"help": "min gap between spans with no_mask_overlap"})
    no_mask_overlap: bool = field(default=False, metadata={"help": "forbid overlapping spans"})
    text_mask_prob: Optional[float] = field(
        default=None, metadata={"help": "mask_prob for the text units (None: same as speech)"}
    )
    logit_temp: float = field(default=0.1, metadata={"help": "tau of the UMLM logits cos(W h, e(z)) / tau"})
    random_swap_prob: float = field(
        default=0.4, metadata={"help": "span-start probability of random swapping (0: off); "
                                       "the published models use mask_prob / 2"},
    )
    random_swap_length: int = field(
        default=5, metadata={"help": "span length of random swapping (published: mask_length // 2)"}
    )
    pretraining_heads: bool = field(
        default=True,
        metadata={"help": "False: the encoder alone (a released cleaned checkpoint after `speechlm convert`): no "
                          "unit embedding, UMLM heads or UCTC head; it extracts features and fine-tunes (ASR, "
                          "ST) but cannot continue pre-training"},
    )
    scaling_for_att: float = field(
        default=1.0,
        metadata={"help": "fp16 guard of the Shared Transformer's attention, as the published models: queries "
                          "divided by it before q.k and q.r, logits multiplied back and their row maximum "
                          "subtracted before the softmax (published Large: 32; 1 = off; no effect in float32)"},
    )
    unit_embed_scale: float = field(
        default=1.0,
        metadata={"help": "factor on the unit embedding wherever it enters the Shared Transformer (text and "
                          "swapped frames); 1.0 as the published models (fairseq no_scale_embedding). The "
                          "Speech Transformer's output has norm ~sqrt(D), an initial unit embedding ~1: "
                          "sqrt(D) puts both at one scale (examples/mini/SHARED_SPACE.md)"},
    )
    l2_embedding: bool = field(
        default=False,
        metadata={"help": "the published option (off in the released models): an L2 loss pulling the Shared "
                          "Transformer's speech input at masked frames towards their unit's embedding, "
                          "mean square / the embedding's squared norm (the criterion's embedding_l2_weight)"},
    )
    uctc_letters: Any = field(
        default=None,
        metadata={"help": "symbols of the letter dictionary the UCTC head predicts; filled in when the "
                          "model is built and saved with the checkpoint; leave empty"},
    )


def _bert_init(module: nn.Module) -> None:
    """fairseq's ``init_bert_params`` (Linear and Embedding weights normal(0, 0.02), biases and the
    padding row zero), in place: fairseq's own copies through the CPU, which fails on the meta device
    where models are built only to count their parameters."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


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
        if cfg.frontend == "logmel":
            self.feature_extractor = LogMelFrontEnd(D)
            feat_dim = D
        else:
            conv_layers = parse_conv_layers(cfg.conv_feature_layers)
            self.feature_extractor = MaskedConvFeatureExtractor(
                conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
            )
            feat_dim = conv_layers[-1][0]
        self.layer_norm = LayerNorm(feat_dim)
        self.post_extract_proj = nn.Linear(feat_dim, D) if feat_dim != D else None
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(D).uniform_())

        def stack(n, **kw):
            return RelPosTransformer(
                n, D, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, cfg.dropout,
                cfg.attention_dropout, cfg.activation_dropout, cfg.activation_fn,
                cfg.layer_norm_first, cfg.encoder_layerdrop, **kw,
            )

        self.speech_encoder = stack(cfg.speech_encoder_layers, conv_pos=cfg.conv_pos,
                                    conv_pos_groups=cfg.conv_pos_groups)
        # as the published speech Transformer (and HuBERT's): BERT initialisation (normal, std 0.02) of
        # its linear layers, attention projections and relative key table; the Shared Transformer keeps
        # fairseq's Transformer initialisation, as the published unit encoder does
        self.speech_encoder.apply(_bert_init)
        # the published models guard only the Shared (unit) Transformer's attention with scaling_for_att
        self.shared_encoder = stack(cfg.shared_encoder_layers, absolute_positions=True,
                                    scaling_for_att=getattr(cfg, "scaling_for_att", 1.0))

        self.num_units, self.unit_pad = num_units, unit_pad
        self.num_letters = num_letters
        self.num_updates = 0
        if not cfg.pretraining_heads:  # the encoder of a released cleaned checkpoint
            self.unit_embed = self.umlm_proj = self.umlm_label_embs = self.uctc_head = None
            return
        self.unit_embed = nn.Embedding(num_units, D, padding_idx=unit_pad)
        nn.init.normal_(self.unit_embed.weight, mean=0, std=D ** -0.5)
        with torch.no_grad():
            self.unit_embed.weight[unit_pad].zero_()
        # one projection and one label-embedding table per UMLM output: 0 = Speech, 1 = Shared Transformer
        self.umlm_proj = nn.ModuleList(nn.Linear(D, cfg.final_dim) for _ in range(2))
        self.umlm_label_embs = nn.ParameterList(
            nn.Parameter(torch.empty(num_units, cfg.final_dim).uniform_()) for _ in range(2)
        )
        self.uctc_head = UCTCHead(D, num_letters) if num_letters > 0 else None

    @classmethod
    def build_model(cls, cfg: SpeechLMConfig, task):
        units = task.unit_dictionary
        letters = getattr(task, "letter_dictionary", None)
        if letters is not None:  # saved with the checkpoint: the letters the UCTC head predicts
            cfg.uctc_letters = list(letters.symbols)
            store_in_saved_config(cfg, "uctc_letters", cfg.uctc_letters)
        return cls(cfg, len(units), units.pad(), len(letters) if letters is not None else 0)

    @classmethod
    def from_spec(cls, spec: PretrainedSpec, overrides: Optional[Dict] = None) -> "SpeechLMModel":
        """An untrained model of the architecture ``spec`` describes (fields in ``overrides`` win)."""
        from fairseq.data import Dictionary
        from omegaconf import OmegaConf

        cfg = OmegaConf.merge(
            OmegaConf.structured(SpeechLMConfig),
            {k: v for k, v in spec.model_cfg.items() if k != "_name"},
            overrides or {},
        )
        return cls(cfg, spec.num_units, Dictionary().pad(), spec.num_letters)

    @classmethod
    def from_checkpoint(cls, path: str, arg_overrides: Optional[Dict] = None,
                        state: Optional[Dict] = None) -> "SpeechLMModel":
        """The pre-trained model saved in a ``speechlm`` checkpoint, without the task's data on disk.

        ``state``: the checkpoint already read from ``path`` (else it is read with the one reader,
        ``speechlm.checkpoint.read_checkpoint``). Raises ``UserError`` naming the file if it is not a
        ``speechlm`` pre-training checkpoint.
        """
        if state is None:
            state = read_checkpoint(path)
        spec = PretrainedSpec.from_checkpoint(path, state)
        overrides = {k: v for k, v in (arg_overrides or {}).items() if k in spec.model_cfg or k == "uctc_letters"}
        model = cls.from_spec(spec, overrides)
        model.load_state_dict(state["model"], strict=True)
        return model

    def set_num_updates(self, num_updates):
        super().set_num_updates(num_updates)
        self.num_updates = num_updates

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        """As ``nn.Module``'s; an encoder-only state (a converted released cleaned checkpoint) into a model
        with pre-training heads (continued pre-training) is refused, naming what the release removed."""
        if self.unit_embed is not None and "unit_embed.weight" not in state_dict \
                and any(k.startswith("speech_encoder.") for k in state_dict):
            raise UserError(
                "cannot continue pre-training from this checkpoint: it is the encoder of a released cleaned "
                f"checkpoint (model.pretraining_heads=false): the release removed {RELEASE_REMOVED}. Use it to "
                "extract features or to fine-tune (model.w2v_path=...); pre-training needs the full checkpoint"
            )
        return super().load_state_dict(state_dict, strict=strict, model_cfg=model_cfg, args=args)

    def _require_pretraining_heads(self):
        if not self.cfg.pretraining_heads:
            raise UserError(f"this SpeechLM model is the encoder of a released cleaned checkpoint "
                            f"(model.pretraining_heads=false): the release removed {RELEASE_REMOVED}; it "
                            "extracts features and fine-tunes, it cannot be pre-trained further")

    def remove_pretraining_modules(self) -> None:
        """Drop what only pre-training needs: unit embedding, UMLM projections and label embeddings, and
        the UCTC head (the CTC fine-tuning takes it first when it starts from it)."""
        for name in PRETRAINING_MODULES:
            setattr(self, name, None)

    # ------------------------------------------------------------------ speech
    def _speech_features(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor]):
        """Front end + LayerNorm + projection.

        ``(B,S) -> features (B,T,D), frame padding mask (B,T) or None, feature penalty`` (the mean
        square of the front end's output, the published criterion's ``features_pen``).
        """
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
        penalty = feats.float().pow(2).mean()
        feats = self.layer_norm(feats.transpose(1, 2))
        frame_padding = None
        if lengths is not None:
            frame_padding = _padding_mask_from_lengths(self.feature_extractor.output_lengths(lengths), feats.size(1))
        if self.post_extract_proj is not None:
            feats = self.post_extract_proj(feats)
        return feats, frame_padding, penalty

    def _span_mask(self, B: int, T: int, padding_mask: Optional[torch.Tensor], prob: float, length: int,
                   stream: int, device) -> torch.Tensor:
        """``(B,T)`` bool spans (fairseq's compute_mask_indices), seeded from torch's RNG.

        The task seeds torch with (``common.seed``, update, rank, micro-batch) for each training step, so
        the spans depend only on those and ``stream`` (mask, swap, text mask).
        """
        seed = int(torch.randint(1, 2 ** 31 - 1, ()).item())
        mask = compute_mask_indices(
            (B, T), padding_mask, prob, length, self.cfg.mask_selection, self.cfg.mask_other,
            min_masks=2, no_overlap=self.cfg.no_mask_overlap, min_space=self.cfg.mask_min_space,
            seed=seed, epoch=stream, indices=torch.arange(B),
        )
        mask = torch.from_numpy(mask).to(device)
        if padding_mask is not None:
            mask = mask & ~padding_mask
        return mask

    def swap_positions(self, mask_indices: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """Frames to swap for their unit embedding: spans (``random_swap_prob``, ``random_swap_length``)
        drawn like mask spans, kept only at unmasked real frames."""
        B, T = mask_indices.shape
        swap = self._span_mask(B, T, padding_mask, self.cfg.random_swap_prob, self.cfg.random_swap_length,
                               SWAP_STREAM, mask_indices.device)
        return swap & ~mask_indices

    def embed_units(self, units: torch.Tensor) -> torch.Tensor:
        """``(B,T)`` unit ids -> ``(B,T,D)`` the Shared Transformer's input for them (``unit_embed_scale`` applied)."""
        x = self.unit_embed(units)
        return x if self.cfg.unit_embed_scale == 1.0 else x * self.cfg.unit_embed_scale

    def embedding_l2(self, h_speech: torch.Tensor, target: torch.Tensor, mask_indices: torch.Tensor) -> torch.Tensor:
        """The published ``l2_embedding`` loss: at the masked frames, mean over D of (speech - unit embedding)^2
        divided by the embedding's squared norm, averaged over the frames (a scalar)."""
        e = self.embed_units(target)[mask_indices].float()
        return ((h_speech[mask_indices].float() - e).pow(2).mean(-1) / e.pow(2).sum(-1)).mean()

    def umlm_logits(self, h: torch.Tensor, layer: int) -> torch.Tensor:
        """``h (N, D) -> (N, num_units)`` logits cos(W_layer h, e_layer(z)) / tau for every unit z."""
        q = F.normalize(self.umlm_proj[layer](h).float(), dim=-1)
        e = F.normalize(self.umlm_label_embs[layer].float(), dim=-1)
        return (q @ e.t()) / self.cfg.logit_temp

    def forward(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None,
        target: Optional[torch.Tensor] = None, mask: bool = True,
        mask_indices: Optional[torch.Tensor] = None, swap_indices: Optional[torch.Tensor] = None,
    ) -> Dict[str, torch.Tensor]:
        """Speech pre-training pass.

        ``source`` (B,S) waveform, ``padding_mask`` (B,S) True at padding, ``target`` (B,T) frame units
        (T = conv frames; pad index beyond each utterance). Returns ``umlm_logits``: a list of two
        (N, num_units) tensors at the N masked frames, ``umlm_targets`` (N,), ``mask_indices`` (B,T),
        ``swap_indices`` (B,T), ``padding_mask`` (B,T) or None, ``features_pen`` (scalar).

        ``mask_indices`` / ``swap_indices`` (B,T bool), when given, replace the drawn mask and swap
        spans (used as given: swaps should avoid masked frames); for tests that replay another
        implementation's draws (tests/test_training_parity.py).
        """
        self._require_pretraining_heads()
        x, frame_padding, penalty = self._speech_features(source, padding_mask)
        B, T, _ = x.shape
        if target is not None and target.size(1) != T:
            raise ValueError(
                f"speech batch: targets have {target.size(1)} frames but the front end made {T}; "
                "labels must be one per 20 ms frame (see SpeechLabelDataset)"
            )
        x = self.dropout_input(x)
        if mask_indices is not None:
            if not mask or mask_indices.shape != (B, T):
                raise ValueError(f"mask_indices {tuple(mask_indices.shape)} given with mask={mask}; "
                                 f"need mask=True and shape {(B, T)}")
            mask_indices = mask_indices.to(device=x.device, dtype=torch.bool)
        elif mask:
            mask_indices = self._span_mask(B, T, frame_padding, self.cfg.mask_prob, self.cfg.mask_length,
                                           MASK_STREAM, x.device)
        if mask:
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        else:
            mask_indices = torch.zeros(B, T, dtype=torch.bool, device=x.device)
        h_speech = self.speech_encoder(x, frame_padding)

        swap = torch.zeros_like(mask_indices)
        h_mixed = h_speech
        if swap_indices is not None and target is not None and mask:
            swap = swap_indices.to(device=x.device, dtype=torch.bool)
            h_mixed = torch.where(swap.unsqueeze(-1), self.embed_units(target).to(h_speech.dtype), h_speech)
        elif self.cfg.random_swap_prob > 0 and target is not None and mask:
            swap = self.swap_positions(mask_indices, frame_padding)
            h_mixed = torch.where(swap.unsqueeze(-1), self.embed_units(target).to(h_speech.dtype), h_speech)
        h_shared = self.shared_encoder(h_mixed, frame_padding)

        out = {"mask_indices": mask_indices, "swap_indices": swap, "padding_mask": frame_padding,
               "features_pen": penalty}
        if self.cfg.l2_embedding and target is not None and mask_indices.any():
            out["embedding_l2_loss"] = self.embedding_l2(h_speech, target, mask_indices)
        out["umlm_logits"] = [
            self.umlm_logits(h_speech[mask_indices], 0),
            self.umlm_logits(h_shared[mask_indices], 1),
        ]
        if target is not None:
            out["umlm_targets"] = target[mask_indices]
        return out

    def extract_features(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, output_layer: Optional[int] = None,
        ret_layer_results: bool = False, transform_features: Optional[Callable] = None,
    ):
        """Speech representations, no masking: ``(B,S) -> features (B,T,D), padding_mask (B,T) or None``.

        The published ``SpeechLM.extract_features`` semantics, ``output_layer`` counting the L layers
        from 1: 1..L/2 stop inside the Speech Transformer (pre-LN: its final norm at L/2 only); any
        larger value, or None, gives the final output.

        ``ret_layer_results=True`` returns ``((features, layer_results), padding_mask)``;
        ``layer_results`` holds, as ``(T,B,D)`` tensors (the published layout), the output of each
        layer up to ``output_layer``: Speech Transformer layers 1..min(k, L/2), then Shared
        Transformer layers up to k, each before any final norm (so in the pre-LN Large layout the
        L/2-th entry is not ``output_layer=L/2``'s output, and the L-th not the final output). With
        ``output_layer=None`` it is empty, as published; ``output_layer=L`` gives every layer.

        ``transform_features(features (B,T,D), frame padding (B,T) or None) -> (B,T,D)``, when given, is
        applied to the front end's output before the first Transformer layer (the fine-tuned encoders'
        input dropout and time/channel masking).
        """
        x, frame_padding, _ = self._speech_features(source, padding_mask)
        if transform_features is not None:
            x = transform_features(x, frame_padding)
        n_speech = len(self.speech_encoder.layers)
        n_all = n_speech + len(self.shared_encoder.layers)
        if output_layer is not None and not 1 <= output_layer <= n_all:
            raise ValueError(f"output_layer={output_layer} outside 1..{n_all}")
        want = ret_layer_results and output_layer is not None
        layer_results = []
        if output_layer is not None and output_layer <= n_speech:
            x = self.speech_encoder(x, frame_padding, output_layer, return_all_hiddens=want)
        else:
            x = self.speech_encoder(x, frame_padding, return_all_hiddens=want)
            if want:
                x, states = x
                layer_results += states[1:]
            x = self.shared_encoder(x, frame_padding, return_all_hiddens=want)
        if want:
            x, states = x
            layer_results += states[1: 1 + output_layer - len(layer_results)]
        if ret_layer_results:
            return (x, layer_results), frame_padding
        return x, frame_padding

    def layer_states(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None):
        """Every hidden state, as s3prl's HuBERT upstream lists them: ``(B,S) -> [L + 1 of (B,T,D)], padding``.

        The input of the first Speech Transformer layer, then the output of each of the L layers
        (the entries of ``extract_features(..., output_layer=L, ret_layer_results=True)``).
        """
        x, frame_padding, _ = self._speech_features(source, padding_mask)
        x, speech = self.speech_encoder(x, frame_padding, return_all_hiddens=True)
        _, shared = self.shared_encoder(x, frame_padding, return_all_hiddens=True)
        return [h.transpose(0, 1) for h in speech + shared[1:]], frame_padding

    # ------------------------------------------------------------------ text
    def forward_text(self, units: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, mask: bool = True,
                     mask_indices: Optional[torch.Tensor] = None):
        """Text pre-training pass: ``units`` (B,T) upsampled unit ids, ``padding_mask`` (B,T).

        Returns ``uctc_logits`` (B,T,letters) and ``uctc_lengths`` (B,): one output per unit frame.
        ``mask_indices`` (B,T bool), when given, replaces the drawn mask (tests that replay draws).
        """
        self._require_pretraining_heads()
        if self.uctc_head is None:
            raise RuntimeError("this SpeechLM model has no UCTC head (built without a letter dictionary)")
        x = self.embed_units(units)
        if mask_indices is not None:
            if not mask or mask_indices.shape != units.shape:
                raise ValueError(f"mask_indices {tuple(mask_indices.shape)} given with mask={mask}; "
                                 f"need mask=True and shape {tuple(units.shape)}")
            x = torch.where(mask_indices.to(x.device, torch.bool).unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        elif mask:
            mask_prob = self.cfg.mask_prob if self.cfg.text_mask_prob is None else self.cfg.text_mask_prob
            mask_indices = self._span_mask(x.size(0), x.size(1), padding_mask, mask_prob, self.cfg.mask_length,
                                           TEXT_MASK_STREAM, x.device)
            x = torch.where(mask_indices.unsqueeze(-1), self.mask_emb.to(x.dtype), x)
        h = self.shared_encoder(x, padding_mask)
        if padding_mask is not None:
            lengths = (~padding_mask).long().sum(-1)
        else:
            lengths = torch.full((h.size(0),), h.size(1), dtype=torch.long, device=h.device)
        return {"uctc_logits": self.uctc_head(h), "uctc_lengths": lengths}

    def extract_text_features(
        self, units: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, output_layer: Optional[int] = None
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Text representations, no masking: units (B,T) -> features (B,T,D), padding_mask.

        ``output_layer`` counts the Shared Transformer's layers from 1; None = its last layer.
        """
        if output_layer is not None and not 1 <= output_layer <= len(self.shared_encoder.layers):
            raise ValueError(f"output_layer={output_layer} outside 1..{len(self.shared_encoder.layers)}")
        self._require_pretraining_heads()
        return self.shared_encoder(self.embed_units(units), padding_mask, output_layer), padding_mask

    def speech_encoder_parameters(self) -> int:
        """Parameters of the speech encoder: front end, projection, mask embedding and all L layers."""
        skip = ("unit_embed.", "umlm_proj.", "umlm_label_embs.", "uctc_head.")
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith(skip))
