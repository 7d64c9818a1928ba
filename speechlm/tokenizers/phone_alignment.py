"""CTC alignment of the phone recognizer's posteriors -> one phone per 50 Hz frame.

- ``forced_align``: CTC Viterbi alignment of a token sequence in which some tokens may be skipped;
- ``label_with_transcript``: forced alignment of a transcript's phones, ``SIL`` optional at both edges and
  between words (Kaldi position-dependent labels when the lexicon has them: see ``phone_recognizer``);
- ``label_without_transcript``: the per-frame argmax of the posteriors;
- ``fill_blanks``: blank frames go to the neighbouring phone (a blank run is split at its middle).

Posteriors are ``(T, 41)`` CTC log probabilities, blank at index 0 and unit ``u`` at
``PHONE_UNITS.index(u) + 1`` (``phone_recognizer.posteriors``).
"""
from typing import List, Sequence

import numpy as np

from speechlm.tokenizers.lexicon import SIL
from speechlm.tokenizers.phone_recognizer import BLANK, PHONE_UNITS, base_phone

NEG_INF = -1e30


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
