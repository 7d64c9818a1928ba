"""A phone n-gram LM and CTC prefix beam search with it, for labelling speech without a transcript.

The Kaldi tokenizer of the SpeechLM paper decodes unpaired speech with a lexicon and a language model; the
per-frame argmax of the recognizer's posteriors ignores which phone sequences English allows. Here:

1. ``train_phone_lm(text_lines, lexicon, path, order=4)``: each sentence of the (normalized) LM text becomes
   the phones of its words through the lexicon (sentences with a word missing from it are skipped and
   counted); an interpolated Kneser-Ney n-gram over phones is written as ARPA
   (``speechlm.decoding.ngram``). ``SIL`` is not in the LM: silence may occur anywhere.
2. ``beam_search(log_probs, lm)``: CTC prefix beam search over the 39 phones with
   ``score = log P_ctc + lm_weight * ln P_lm + insertion * |phones|``, where the blank and ``SIL`` posteriors are
   merged (silence emits no LM token).
3. ``label_with_phone_lm``: the best phone sequence is force-aligned back to the frames with ``SIL`` optional
   between every two phones (``phone_alignment.forced_align``), so frame labels keep their silences.
"""
import math
from collections import defaultdict
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from speechlm.tokenizers.lexicon import SIL, Lexicon, normalize_text

LN10 = math.log(10.0)
NEG_INF = -1e30


class ArpaLM:
    """An ARPA n-gram model held in dicts; ``logp(history, token)`` in natural log with back-off."""

    def __init__(self, probs: Dict[Tuple[str, ...], float], backoffs: Dict[Tuple[str, ...], float], order: int):
        self.probs, self.backoffs, self.order = probs, backoffs, order
        self._cache: Dict[Tuple[str, ...], float] = {}

    @classmethod
    def load(cls, path: str) -> "ArpaLM":
        probs, backoffs, order, section = {}, {}, 0, 0
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                line = line.strip()
                if not line or line.startswith("ngram ") or line == "\\data\\":
                    continue
                if line.startswith("\\"):
                    if line == "\\end\\":
                        break
                    try:
                        section = int(line[1:].split("-")[0])
                    except ValueError:
                        raise ValueError(f"{path}:{lineno}: unexpected ARPA section {line!r}") from None
                    order = max(order, section)
                    continue
                parts = line.split()
                if len(parts) < section + 1:
                    raise ValueError(f"{path}:{lineno}: expected 'logprob w1..w{section} [backoff]'")
                g = tuple(parts[1:1 + section])
                probs[g] = float(parts[0]) * LN10
                if len(parts) > section + 1:
                    backoffs[g] = float(parts[section + 1]) * LN10
        if not probs:
            raise ValueError(f"{path}: no n-grams; not an ARPA file")
        return cls(probs, backoffs, order)

    def logp(self, history: Tuple[str, ...], token: str) -> float:
        key = history[-(self.order - 1):] + (token,) if self.order > 1 else (token,)
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        h, bo = key[:-1], 0.0
        while True:
            p = self.probs.get(h + (token,))
            if p is not None:
                out = bo + p
                break
            if not h:
                out = bo + self.probs.get(("<unk>",), -100.0 * LN10)
                break
            bo += self.backoffs.get(h, 0.0)
            h = h[1:]
        self._cache[key] = out
        return out


def lm_sentences(lines: Iterable[str], lexicon: Lexicon, stats: Optional[dict] = None):
    """Phone sequences (no SIL) of the text lines whose words are all in the lexicon."""
    for line in lines:
        words, _ = normalize_text(line)
        if not words:
            continue
        phones: List[str] = []
        for w in words:
            p = lexicon.phones(w)
            if p is None:
                phones = None
                break
            phones.extend(p)
        if stats is not None:
            stats["sentences" if phones else "skipped_oov"] = stats.get("sentences" if phones else "skipped_oov", 0) + 1
        if phones:
            yield phones


def train_phone_lm(lines: Iterable[str], lexicon: Lexicon, path: str, order: int = 4) -> dict:
    """Write a phone n-gram ARPA estimated from text lines; returns counts (sentences, skipped, n-grams)."""
    from speechlm.decoding.ngram import write_arpa

    stats: dict = {}
    info = write_arpa(lm_sentences(lines, lexicon, stats), path, order)
    stats.update(info)
    return stats


def _lse(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b <= NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


def beam_search(log_probs: np.ndarray, units: Sequence[str], lm: ArpaLM, blank: int = 0,
                silence: Optional[int] = None, lm_weight: float = 1.0, insertion: float = 0.0,
                beam: int = 16, token_prune: float = -8.0) -> List[int]:
    """CTC prefix beam search. ``log_probs`` (T, V) with ``blank`` and optional ``silence`` indices merged
    into one non-emitting symbol; ``units[v]`` names class v for the LM. Returns the best unit-index
    sequence (no blank/silence). Tokens with log-prob below ``token_prune`` at a frame are not extended."""
    lp = np.asarray(log_probs, dtype=np.float64)
    T, V = lp.shape
    empty_lp = lp[:, blank] if silence is None else np.logaddexp(lp[:, blank], lp[:, silence])
    emit = [v for v in range(V) if v != blank and v != silence]
    # prefix -> [p_blank_end, p_nonblank_end]; LM state and score per prefix
    beams: Dict[Tuple[int, ...], List[float]] = {(): [0.0, NEG_INF]}
    lm_score: Dict[Tuple[int, ...], float] = {(): 0.0}
    hist: Dict[Tuple[int, ...], Tuple[str, ...]] = {(): ("<s>",)}
    for t in range(T):
        row = lp[t]
        cands = [v for v in emit if row[v] > token_prune] or [max(emit, key=lambda v: row[v])]
        nxt: Dict[Tuple[int, ...], List[float]] = defaultdict(lambda: [NEG_INF, NEG_INF])
        for prefix, (pb, pnb) in beams.items():
            total = _lse(pb, pnb)
            cell = nxt[prefix]
            cell[0] = _lse(cell[0], total + empty_lp[t])
            last = prefix[-1] if prefix else None
            if last is not None:
                cell[1] = _lse(cell[1], pnb + row[last])
            for c in cands:
                new = prefix + (c,)
                cnew = nxt[new]
                cnew[1] = _lse(cnew[1], (pb if c == last else total) + row[c])
                if new not in lm_score:
                    h = hist[prefix]
                    lm_score[new] = lm_score[prefix] + lm.logp(h, units[c])
                    hist[new] = (h + (units[c],))[-(max(lm.order - 1, 1)):]
        scored = sorted(nxt.items(), key=lambda kv: -(_lse(*kv[1]) + lm_weight * lm_score[kv[0]]
                                                        + insertion * len(kv[0])))
        beams = dict(scored[:beam])
    best = max(beams.items(), key=lambda kv: _lse(*kv[1]) + lm_weight * (
        lm_score[kv[0]] + lm.logp(hist[kv[0]], "</s>")) + insertion * len(kv[0]))
    return list(best[0])


def label_with_phone_lm(log_probs: np.ndarray, lm: ArpaLM, lm_weight: float = 1.0, insertion: float = 0.0,
                        beam: int = 16) -> List[str]:
    """Frame-level phones of one utterance from the recognizer's log posteriors (T, 41) and a phone LM."""
    from speechlm.tokenizers import phone_alignment, phone_recognizer

    units = ("<blank>",) + tuple(phone_recognizer.PHONE_UNITS)
    sil = phone_recognizer.PHONE_UNITS.index(SIL) + 1
    seq = beam_search(log_probs, units, lm, blank=phone_recognizer.BLANK, silence=sil, lm_weight=lm_weight,
                      insertion=insertion, beam=beam)
    if not seq:
        return [SIL] * log_probs.shape[0]
    tokens, optional = [sil], [True]
    for u in seq:
        tokens.extend([u, sil])
        optional.extend([False, True])
    try:
        tok_idx = phone_alignment.forced_align(log_probs, tokens, optional)
    except ValueError:  # more phones than frames allow: keep the posteriors' own labels
        return phone_alignment.label_without_transcript(log_probs)
    frame_units = np.where(tok_idx >= 0, np.asarray(tokens)[np.maximum(tok_idx, 0)], phone_recognizer.BLANK)
    return [phone_recognizer.PHONE_UNITS[u - 1] for u in phone_alignment.fill_blanks(frame_units)]
