"""Speech -> frame-level phone units without Kaldi: a small CTC phone recognizer and a CTC aligner.

Recipe (``speechlm phone-units``):

1. ``train``: 39-d MFCC at 100 Hz (per-utterance mean/variance normalized) -> a stride-2 convolution that
   puts output frame ``i`` at the centre of the 50 Hz frame ``i`` -> residual dilated conv blocks -> 40 units
   (39 ARPAbet + SIL) plus the CTC blank. Or, as input, a layer of a pre-trained hubert/speechlm checkpoint
   (already 50 Hz: stride 1). Targets come from the ``.wrd`` transcripts of ``train_paired``
   through the lexicon, with ``SIL`` at both edges (what a user has: words, not alignments).
2. ``label``: one unit per 50 Hz frame (``num_frames_50hz``). With a transcript: CTC Viterbi forced
   alignment of its phones, ``SIL`` optional at both edges and between words. Without: per-frame argmax of
   the CTC posteriors. Either way, blank frames go to the neighbouring phone (each blank run is split at its
   middle between the phone before and the phone after).
3. ``score``: frame accuracy against the corpus's true alignments, and phone error rate of the collapsed
   sequences (SIL left out on both sides).

Kaldi position-dependent phones (``--inventory kaldi``, ``lexicon.KALDI_SYMBOLS``): the recognizer stays
position-independent (targets and alignment use each symbol's ``base_phone``), and ``label_with_transcript``
writes, for every frame, the transcript token it is aligned to, i.e. the lexicon's stressed phone with its
word-position suffix (``SIL`` bare): Kaldi frame labels from a position-independent alignment plus the word
boundaries of the transcript. Without a transcript there are no word boundaries, so no Kaldi labels.

The checkpoint is a plain ``torch.save`` of tensors and built-in types (loads with ``weights_only=True``).
"""
import logging
import math
from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from speechlm.data.manifest import num_frames_50hz
from speechlm.tokenizers.lexicon import PHONES, SIL, Lexicon

logger = logging.getLogger(__name__)

PHONE_UNITS = PHONES  # the corpus's dict.phn.txt inventory (one definition, in tokenizers/lexicon.py)
BLANK = 0  # CTC blank; unit u has index PHONE_UNITS.index(u) + 1
NEG_INF = -1e30


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


def _collate(items):
    feats = [torch.from_numpy(f) for f in items]
    lengths = torch.tensor([len(f) for f in feats])
    return nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


def train_recognizer(
    feats: List[np.ndarray],
    targets: List[List[int]],
    cfg: PhoneRecognizerConfig = None,
    epochs: int = 20,
    batch_size: int = 16,
    lr: float = 2e-3,
    seed: int = 0,
    max_updates: Optional[int] = None,
    log_every: int = 50,
) -> Tuple[PhoneRecognizer, List[float]]:
    """Train with CTC; returns the model (eval mode) and the loss of every update."""
    cfg = cfg or PhoneRecognizerConfig()
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = PhoneRecognizer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n_batches = math.ceil(len(feats) / batch_size)
    total = epochs * n_batches if max_updates is None else min(max_updates, epochs * n_batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1), pct_start=0.1)
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    losses: List[float] = []
    model.train()
    for epoch in range(epochs):
        order = rng.permutation(len(feats))
        for b in range(n_batches):
            if len(losses) >= total:
                break
            idx = order[b * batch_size : (b + 1) * batch_size]
            x, lengths = _collate([feats[i] for i in idx])
            lp, out_len = model(x, lengths)
            tgt = [torch.tensor(targets[i]) for i in idx]
            loss = ctc(lp.transpose(0, 1), torch.cat(tgt), out_len, torch.tensor([len(t) for t in tgt]))
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            losses.append(loss.item())
            if log_every and len(losses) % log_every == 0:
                logger.info("epoch %d update %d: ctc loss %.3f", epoch + 1, len(losses), np.mean(losses[-log_every:]))
    model.eval()
    return model, losses


def save_recognizer(model: PhoneRecognizer, path: str) -> None:
    torch.save({"config": asdict(model.cfg), "units": list(PHONE_UNITS), "model": model.state_dict()}, path)


def load_recognizer(path: str) -> PhoneRecognizer:
    state = torch.load(path, map_location="cpu", weights_only=True)
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


def forced_align(log_probs: np.ndarray, tokens: Sequence[int], optional: Sequence[bool]) -> np.ndarray:
    """CTC Viterbi alignment: the token index (into ``tokens``) of every frame, -1 for blank.

    ``log_probs`` (T, V) with blank at index 0; ``tokens`` unit indices (>= 1); ``optional[k]`` lets the path
    skip token ``k`` (and the blank after it). Raises ``ValueError`` when no path fits in T frames.
    """
    T, L = log_probs.shape[0], len(tokens)
    S = 2 * L + 1  # blank, t0, blank, t1, ..., t_{L-1}, blank
    label = np.zeros(S, dtype=np.int64)
    label[1::2] = tokens
    # predecessors of each state (up to 4): itself, previous, skip over a blank, skip an optional token
    preds = [[s] for s in range(S)]
    for s in range(1, S):
        preds[s].append(s - 1)
        if s % 2 == 1 and s >= 3 and label[s] != label[s - 2]:
            preds[s].append(s - 2)
    for k in range(L):
        if optional[k]:
            tok_state = 2 * k + 1
            # blank before -> blank after; token before -> blank after / token after
            preds[tok_state + 1].append(tok_state - 1)
            if tok_state >= 3:
                preds[tok_state + 1].append(tok_state - 2)
                if tok_state + 2 < S and label[tok_state + 2] != label[tok_state - 2]:
                    preds[tok_state + 2].append(tok_state - 2)
            if tok_state + 2 < S:
                preds[tok_state + 2].append(tok_state - 1)  # blank before -> next token
    width = max(len(set(p)) for p in preds)
    P = np.full((S, width), -1, dtype=np.int64)
    for s, p in enumerate(preds):
        p = sorted(set(p))
        P[s, : len(p)] = p
    valid = P >= 0
    Pc = np.where(valid, P, 0)
    # a path may start in a state whose earlier tokens are all optional, and end likewise
    start = np.zeros(S, bool)
    end = np.zeros(S, bool)
    for s in range(S):
        before = (s - 1) // 2 if s % 2 else s // 2  # tokens strictly before state s
        after = (s + 1) // 2 if s % 2 else s // 2  # first token strictly after state s
        start[s] = all(optional[:before])
        end[s] = all(optional[after:])
    emit = log_probs[:, label]  # (T, S)
    score = np.where(start, emit[0], NEG_INF)
    back = np.zeros((T, S), dtype=np.int64)
    for t in range(1, T):
        cand = np.where(valid, score[Pc], NEG_INF)  # (S, width)
        j = cand.argmax(1)
        back[t] = Pc[np.arange(S), j]
        score = cand[np.arange(S), j] + emit[t]
    final = np.where(end, score, NEG_INF)
    s = int(final.argmax())
    if final[s] <= NEG_INF / 2:
        raise ValueError(f"no CTC path for {L} tokens in {T} frames (utterance too short for its transcript?)")
    path = np.empty(T, dtype=np.int64)
    for t in range(T - 1, -1, -1):
        path[t] = s
        s = back[t, s]
    return np.where(path % 2 == 1, (path - 1) // 2, -1)


def fill_blanks(frame_units: np.ndarray) -> np.ndarray:
    """Give every blank frame (0) to its neighbouring unit: a blank run is split at its middle between the
    unit before and the unit after; leading/trailing runs go to the only neighbour. (T,) -> (T,)."""
    out = frame_units.copy()
    nz = np.flatnonzero(frame_units != BLANK)
    if len(nz) == 0:
        return np.full_like(frame_units, PHONE_UNITS.index(SIL) + 1)
    T = len(out)
    out[: nz[0]] = out[nz[0]]
    out[nz[-1] + 1 :] = out[nz[-1]]
    for a, b in zip(nz[:-1], nz[1:]):
        if b - a > 1:
            mid = a + 1 + (b - a - 1) // 2
            out[a + 1 : mid] = out[a]
            out[mid:b] = out[b]
    assert len(out) == T
    return out


def label_with_transcript(log_probs: np.ndarray, word_phones: List[List[str]]) -> List[str]:
    """Frame-level phones by forced alignment of the transcript (SIL optional at edges and between words).

    Each frame gets the transcript unit it is aligned to: ARPAbet phones, or Kaldi position-dependent ones
    (aligned by their ``base_phone``)."""
    sil = PHONE_UNITS.index(SIL) + 1
    tokens, optional, names = [sil], [True], [SIL]
    for i, p in enumerate(word_phones):
        if i > 0:
            tokens.append(sil)
            optional.append(True)
            names.append(SIL)
        tokens.extend(PHONE_UNITS.index(base_phone(x)) + 1 for x in p)
        optional.extend([False] * len(p))
        names.extend(p)
    tokens.append(sil)
    optional.append(True)
    names.append(SIL)
    tok_idx = forced_align(log_probs, tokens, optional)
    if np.all(tok_idx < 0):  # an empty transcript aligned to blanks only
        return [SIL] * len(tok_idx)
    # blanks filled on token positions (1-based), so a frame keeps its token's word position
    return [names[t - 1] for t in fill_blanks(tok_idx + 1)]


def label_without_transcript(log_probs: np.ndarray) -> List[str]:
    """Frame-level phones from the per-frame argmax of the CTC posteriors."""
    return [PHONE_UNITS[u - 1] for u in fill_blanks(log_probs.argmax(1))]


def collapse(labels: Sequence[str], drop: Tuple[str, ...] = (SIL,)) -> List[str]:
    """Runs of identical frame labels -> one label each, ``drop`` units removed."""
    out, prev = [], None
    for x in labels:
        if x != prev and x not in drop:
            out.append(x)
        prev = x
    return out


def score_labels(hyp: List[Sequence[str]], ref: List[Sequence[str]]) -> dict:
    """Frame accuracy and phone error rate (collapsed, SIL dropped) of frame-level phone labels."""
    import editdistance

    frames = correct = errors = ref_phones = 0
    for i, (h, r) in enumerate(zip(hyp, ref)):
        if len(h) != len(r):
            raise ValueError(f"utterance {i + 1}: {len(h)} hypothesis frames but {len(r)} reference frames")
        frames += len(r)
        correct += sum(a == b for a, b in zip(h, r))
        rc = collapse(r)
        errors += editdistance.eval(collapse(h), rc)
        ref_phones += len(rc)
    return {"utterances": len(ref), "frames": frames, "frame_accuracy": correct / max(1, frames),
            "phone_error_rate": errors / max(1, ref_phones)}
