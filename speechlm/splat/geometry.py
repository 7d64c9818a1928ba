"""Geometry of the utterance representations (SPLAT, Table 4).

For the s1 vectors of a split: S_avg is the average cosine similarity over all pairs of different
utterances; S_closest is the average, over utterances i, of cos(s1_i, s1_j) where j != i is the utterance
whose TEXT sentence vector t1 (from the language module: its [CLS] output, or its mean token output
with ``pooling="mean"``) is closest to i's. Alignment should raise S_closest well above S_avg: utterances
with similar text get similar speech representations.

``text_geometry_scores`` gives the same scores for t1 itself: S_closest - S_avg of the text vectors is
what a speech module that copied t1 exactly would show: L_seq regresses s1 onto t1, so this is the gap
it aims at on that split.
"""
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from speechlm.data.fbank import SpeakerFeatures
from speechlm.data.splat_text import read_transcripts
from speechlm.models.splat_speech import SplatSpeechEncoder, load_speech_module


@torch.no_grad()
def utterance_vectors(enc: SplatSpeechEncoder, feats: SpeakerFeatures, batch_size: int = 16) -> torch.Tensor:
    """s1 of every row of ``feats`` (in the language module's space when the model projects), (N, H)."""
    out = [None] * len(feats)
    order = np.argsort(feats.lens)
    for b in range(0, len(order), batch_size):
        rows = order[b: b + batch_size]
        xs = [torch.from_numpy(feats[int(r)]) for r in rows]
        T = max(len(x) for x in xs)
        src = torch.zeros(len(xs), T, xs[0].shape[1])
        pad = torch.ones(len(xs), T, dtype=torch.bool)
        for i, x in enumerate(xs):
            src[i, : len(x)] = x
            pad[i, : len(x)] = False
        s = enc.to_text_space(enc(src, pad)["encoder_out"][:, 0])
        for i, r in enumerate(rows):
            out[int(r)] = s[i]
    return torch.stack(out)


def geometry_scores(s1: torch.Tensor, t1: torch.Tensor) -> Dict[str, float]:
    """s1 (N, H) speech vectors, t1 (N, H') text [CLS] vectors -> {"S_avg", "S_closest"} (N >= 2)."""
    N = s1.shape[0]
    if N < 2:
        raise ValueError("geometry needs at least two utterances")
    ss = F.normalize(s1.float(), dim=-1) @ F.normalize(s1.float(), dim=-1).T
    tt = F.normalize(t1.float(), dim=-1) @ F.normalize(t1.float(), dim=-1).T
    off = ~torch.eye(N, dtype=torch.bool)
    s_avg = ss[off].mean().item()
    closest = tt.masked_fill(~off, float("-inf")).argmax(1)
    s_closest = ss[torch.arange(N), closest].mean().item()
    return {"S_avg": s_avg, "S_closest": s_closest}


def random_neighbour_gaps(s1: torch.Tensor, draws: int = 1000, seed: int = 0) -> torch.Tensor:
    """(draws,) gaps S_closest - S_avg of ``s1`` (N, H) when each utterance's "closest" one is drawn at
    random among the others instead of by text: the gap a speech space with no text structure shows by
    chance on N utterances (its spread is the noise floor of the geometry on a small split)."""
    N = s1.shape[0]
    ss = F.normalize(s1.float(), dim=-1) @ F.normalize(s1.float(), dim=-1).T
    s_avg = ss[~torch.eye(N, dtype=torch.bool)].mean()
    g = torch.Generator().manual_seed(seed)
    j = torch.randint(0, N - 1, (draws, N), generator=g)
    j = j + (j >= torch.arange(N))  # skip i itself
    return ss[torch.arange(N), j].mean(1) - s_avg


def text_geometry_scores(t1: torch.Tensor) -> Dict[str, float]:
    """S_avg and S_closest of the text vectors t1 (N, H) themselves (an exact copy of t1 as s1)."""
    return geometry_scores(t1, t1)


@torch.no_grad()
def text_sentence_vectors(bert_path: str, texts: Sequence[str], pooling: str = "cls",
                          batch_size: int = 32) -> torch.Tensor:
    """t1 (N, H) of each text: the language module's [CLS] output (``cls``) or mean token output (``mean``)."""
    from speechlm.splat.bert import BertBundle, pool_sentence

    bundle = BertBundle(bert_path)
    tok, lm = bundle.get_tokenizer(), bundle.get_model(frozen=True)
    out = []
    for b in range(0, len(texts), batch_size):
        enc = tok(list(texts[b: b + batch_size]), padding=True, truncation=True, max_length=128,
                  return_tensors="pt")
        hidden = lm(**enc).last_hidden_state
        out.append(pool_sentence(hidden, enc["attention_mask"].bool(), pooling))
    return torch.cat(out)


def checkpoint_geometry(ckpt: str, data: str, split: str, bert_path: str, transcript_ext: str = "wrd",
                        pooling: str = "cls") -> Dict[str, float]:
    """S_avg and S_closest of the checkpoint's s1 on ``split``, neighbours by the text t1 (``pooling``);
    also ``T_avg``/``T_closest``, the same scores of t1 itself."""
    enc = load_speech_module(ckpt)
    feats = SpeakerFeatures(data, split)
    s1 = utterance_vectors(enc, feats)
    t1 = text_sentence_vectors(bert_path, read_transcripts(data, split, transcript_ext), pooling)
    text = text_geometry_scores(t1)
    return dict(geometry_scores(s1, t1), T_avg=text["S_avg"], T_closest=text["S_closest"])
