"""The phone recognizer of ``speechlm phone-units``: a small CTC model from speech features to 40 phones.

39-d MFCC at 100 Hz (per-utterance mean/variance normalized) -> a stride-2 convolution that puts output
frame ``i`` at the centre of the 50 Hz frame ``i`` -> residual dilated conv blocks -> 40 units (39 ARPAbet +
SIL) plus the CTC blank. Or, as input, a layer of a pre-trained hubert/speechlm checkpoint (already 50 Hz:
stride 1). CTC targets are a transcript's phones through the lexicon, with ``SIL`` at both edges (what a
user has: words, not alignments); Kaldi position-dependent lexicons map to their ``base_phone``.

The rest of the tokenizer lives beside this file: ``phone_training`` (the streamed dataset and the training
loop that validates and resumes), ``phone_alignment`` (forced alignment, argmax labels), ``phone_lm``
(decoding unpaired speech with a phone LM), ``phone_labelling`` (a manifest -> ``.phn``), ``phone_scoring``
(frame accuracy, PER).

The saved model is a plain ``torch.save`` of tensors and built-in types (loads with ``weights_only=True``).
"""
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from speechlm.data.manifest import num_frames_50hz
from speechlm.tokenizers.lexicon import PHONES, SIL, Lexicon

PHONE_UNITS = PHONES  # the corpus's dict.phn.txt inventory (one definition, in tokenizers/lexicon.py)
BLANK = 0  # CTC blank; unit u has index PHONE_UNITS.index(u) + 1


@dataclass
class PhoneRecognizerConfig:
    input_dim: int = 39
    input_rate: int = 100  # 100: Kaldi MFCC frames (a stride-2 conv brings them to 50 Hz); 50: checkpoint features
    feature_checkpoint: str = ""  # "" = MFCC; else a hubert/speechlm checkpoint whose layer is the input
    feature_layer: int = 0
    dim: int = 192
    layers: int = 6  # residual conv blocks at 50 Hz, dilations cycling 1, 2, 4
    kernel: int = 5
    dropout: float = 0.1


class ResidualConvBlock(nn.Module):
    """LayerNorm -> dilated depth-preserving Conv1d -> GELU -> dropout, with a residual; (B, T, C)."""

    def __init__(self, dim, kernel, dilation, dropout):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel, padding=dilation * (kernel - 1) // 2, dilation=dilation)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x, mask):
        y = self.norm(x).masked_fill(mask.unsqueeze(-1), 0.0)
        y = self.conv(y.transpose(1, 2)).transpose(1, 2)
        return x + self.dropout(nn.functional.gelu(y))


class PhoneRecognizer(nn.Module):
    """``forward(feats (B, T100, D), lengths100 (B,)) -> (log_probs (B, T50, 41), lengths50 (B,))``."""

    def __init__(self, cfg: PhoneRecognizerConfig):
        super().__init__()
        self.cfg = cfg
        if cfg.input_rate not in (50, 100):
            raise ValueError(f"input_rate must be 50 or 100 Hz, got {cfg.input_rate}")
        self.stride = cfg.input_rate // 50
        self._featurizer = None
        self.front = nn.Sequential(
            nn.Conv1d(cfg.input_dim, cfg.dim, 5, padding=2),
            nn.GELU(),
            # kernel 3, stride 2, padding 1: output i is centred on input 2i, the 50 Hz frame i's centre
            nn.Conv1d(cfg.dim, cfg.dim, 3, stride=self.stride, padding=1),
            nn.GELU(),
        )
        self.blocks = nn.ModuleList(
            ResidualConvBlock(cfg.dim, cfg.kernel, (1, 2, 4)[i % 3], cfg.dropout) for i in range(cfg.layers)
        )
        self.norm = nn.LayerNorm(cfg.dim)
        self.proj = nn.Linear(cfg.dim, len(PHONE_UNITS) + 1)

    def forward(self, feats, lengths):
        x = self.front(feats.transpose(1, 2)).transpose(1, 2)
        out_lengths = (lengths + self.stride - 1) // self.stride
        mask = torch.arange(x.shape[1]).unsqueeze(0) >= out_lengths.unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask)
        return self.proj(self.norm(x)).log_softmax(-1), out_lengths


    def featurize(self, wav: np.ndarray) -> np.ndarray:
        """The input features this model was trained on, for one waveform."""
        if self._featurizer is None:
            self._featurizer = make_featurizer(self.cfg.feature_checkpoint, self.cfg.feature_layer)
        return self._featurizer(wav)


def _normalize(f: np.ndarray) -> np.ndarray:
    return ((f - f.mean(0)) / (f.std(0) + 1e-5)).astype(np.float32)


def utterance_features(wav: np.ndarray) -> np.ndarray:
    """MFCC 39-d at 100 Hz with per-utterance mean/variance normalization, (T100, 39) float32."""
    from speechlm.tokenizers.features import mfcc_39

    return _normalize(mfcc_39(wav, rate=100))


def make_featurizer(checkpoint: str = "", layer: int = 0):
    """``wav -> (frames, dim)``: MFCC at 100 Hz, or layer ``layer`` of a hubert/speechlm checkpoint at 50 Hz
    (per-utterance mean/variance normalized either way)."""
    if not checkpoint:
        return utterance_features
    from speechlm.tokenizers.features import CheckpointFeatureReader

    reader = CheckpointFeatureReader(checkpoint, layer)
    return lambda wav: _normalize(reader(wav))


def transcript_phones(words: Sequence[str], lexicon: Lexicon) -> Optional[List[List[str]]]:
    """Phones of each word, or None when a word is not in the lexicon."""
    out = []
    for w in words:
        p = lexicon.phones(w)
        if p is None:
            return None
        out.append(p)
    return out


def base_phone(unit: str) -> str:
    """The position-independent, stress-free phone of a unit: ``AE1_B`` -> ``AE``, ``SIL`` -> ``SIL``."""
    return unit.split("_", 1)[0].rstrip("012")


def ctc_targets(word_phones: List[List[str]]) -> List[int]:
    """SIL + phones of all words + SIL, as unit indices (1-based; 0 is blank); Kaldi units by ``base_phone``."""
    ids = [PHONE_UNITS.index(SIL) + 1]
    for p in word_phones:
        ids.extend(PHONE_UNITS.index(base_phone(x)) + 1 for x in p)
    ids.append(PHONE_UNITS.index(SIL) + 1)
    return ids


def save_recognizer(model: PhoneRecognizer, path: str) -> None:
    """The model alone (config, unit inventory, weights), written atomically."""
    from speechlm.checkpoint import atomic_torch_save

    atomic_torch_save({"config": asdict(model.cfg), "units": list(PHONE_UNITS), "model": model.state_dict()}, path)


def load_recognizer(path: str) -> PhoneRecognizer:
    """The phone recognizer ``save_recognizer`` wrote to ``path``, in eval mode."""
    from speechlm.checkpoint import read_torch_file

    state = read_torch_file(path, "phone recognizer")
    if list(state.get("units", [])) != list(PHONE_UNITS):
        raise ValueError(f"{path}: not a speechlm phone recognizer (unit inventory differs)")
    model = PhoneRecognizer(PhoneRecognizerConfig(**state["config"]))
    model.load_state_dict(state["model"])
    return model.eval()


@torch.inference_mode()
def posteriors(model: PhoneRecognizer, wav: np.ndarray) -> np.ndarray:
    """CTC log posteriors at 50 Hz, (num_frames_50hz(len(wav)), 41)."""
    f = torch.from_numpy(model.featurize(wav)).unsqueeze(0)
    lp, _ = model(f, torch.tensor([f.shape[1]]))
    lp = lp[0].numpy()
    n = num_frames_50hz(len(wav))
    if lp.shape[0] != n:
        raise RuntimeError(f"recognizer gave {lp.shape[0]} frames for {len(wav)} samples, expected {n}")
    return lp
