"""A small n-gram language model estimator that writes ARPA files (for KenLM / pyctcdecode).

``write_arpa(sentences, path, order=4)`` estimates an interpolated Kneser-Ney model (one absolute discount
per order, D = n1 / (n1 + 2 n2), continuation counts for the lower orders) from token sequences -- words
for a word LM, phones for the phone LM of the phone-unit tokenizer -- and writes it in ARPA back-off form
(log10 probabilities; back-off weights make the stored probabilities sum to one per history).

It holds every n-gram count in memory: fine for up to a few million tokens (the mini corpus, a LibriSpeech
phone LM on a sample of the LM text). For the 800M-word LibriSpeech LM corpus use KenLM's ``lmplz``
(or the official 4-gram ARPA); the files are interchangeable.
"""
import math
from collections import defaultdict
from typing import Dict, Iterable, List, Sequence, Tuple

from speechlm.atomic import atomic_write

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
UNK_LOG10 = -100.0  # what KenLM's lmplz writes for <unk> when the vocabulary is closed


def _discount(counts: Dict[Tuple[str, ...], int]) -> float:
    """Absolute discount D = n1 / (n1 + 2 n2) (Ney et al.), kept in [0.1, 0.9]."""
    n1 = sum(1 for c in counts.values() if c == 1)
    n2 = sum(1 for c in counts.values() if c == 2)
    return min(max(n1 / (n1 + 2 * n2), 0.1), 0.9) if n1 else 0.5


def estimate(sentences: Iterable[Sequence[str]], order: int = 4):
    """Interpolated Kneser-Ney from token sequences.

    Returns ``(probs, backoffs)``: per order n (index n-1), ``probs[n-1][ngram]`` = p(w | h) (linear, the
    interpolated estimate of every seen n-gram) and ``backoffs[n-1][history]`` = gamma(history) for the
    histories of length n-1 (so that an unseen w gets gamma(h) * p(w | h[1:]): ARPA back-off form).
    """
    if order < 1:
        raise ValueError(f"order must be >= 1, got {order}")
    raw: List[Dict[Tuple[str, ...], int]] = [defaultdict(int) for _ in range(order)]
    n_sent = 0
    for sent in sentences:
        toks = (BOS,) + tuple(sent) + (EOS,)
        n_sent += 1
        for n in range(1, order + 1):
            for i in range(len(toks) - n + 1):
                raw[n - 1][toks[i:i + n]] += 1
    if n_sent == 0:
        raise ValueError("no sentences to estimate a language model from")
    # Kneser-Ney: below the top order an n-gram counts the distinct words seen before it, except at the
    # sentence start (<s> has no left context: raw counts)
    counts: List[Dict[Tuple[str, ...], int]] = [None] * order
    counts[order - 1] = raw[order - 1]
    for n in range(order - 1, 0, -1):
        c: Dict[Tuple[str, ...], int] = defaultdict(int)
        for g in raw[n]:  # each distinct (n+1)-gram v + g adds one continuation to g
            c[g[1:]] += 1
        for g, k in raw[n - 1].items():
            if g[0] == BOS:
                c[g] = k
        counts[n - 1] = c
    counts[0].pop((BOS,), None)  # never predicted
    vocab = [g[0] for g in counts[0]]
    probs: List[Dict[Tuple[str, ...], float]] = []
    backoffs: List[Dict[Tuple[str, ...], float]] = []
    for n in range(1, order + 1):
        c = counts[n - 1]
        D = _discount(c)
        total: Dict[Tuple[str, ...], int] = defaultdict(int)
        types: Dict[Tuple[str, ...], int] = defaultdict(int)
        for g, k in c.items():
            total[g[:-1]] += k
            types[g[:-1]] += 1
        gamma = {h: D * types[h] / total[h] for h in total}
        if n == 1:
            lower = {(): 1.0 / len(vocab)}
            p = {g: max(k - D, 0) / total[()] + gamma[()] / len(vocab) for g, k in c.items()}
        else:
            lower = probs[n - 2]
            p = {g: max(k - D, 0) / total[g[:-1]] + gamma[g[:-1]] * lower[g[1:]] for g, k in c.items()}
        probs.append(p)
        backoffs.append(gamma)
    return probs, backoffs


def write_arpa(sentences: Iterable[Sequence[str]], path: str, order: int = 4) -> dict:
    """Estimate from token sequences and write ``path`` (ARPA). Returns ``{"order", "ngrams": [...]}``."""
    probs, backoffs = estimate(sentences, order)
    # an n-gram that is a history of order n+1 carries that history's back-off weight
    tables = []
    for n in range(1, order + 1):
        table = {g: (math.log10(p), None) for g, p in probs[n - 1].items()}
        if n < order:
            for h, gamma in backoffs[n].items():
                lp = table.get(h, (-99.0 if h == (BOS,) else None, None))[0]
                if lp is None:
                    raise AssertionError(f"history {h} has no {n}-gram entry")
                table[h] = (lp, math.log10(gamma))
        tables.append(table)
    tables[0].setdefault((BOS,), (-99.0, None))
    tables[0][(UNK,)] = (UNK_LOG10, None)
    with atomic_write(path, what="ARPA language model") as f:
        f.write("\n\\data\\\n")
        for n, t in enumerate(tables, start=1):
            f.write(f"ngram {n}={len(t)}\n")
        for n, t in enumerate(tables, start=1):
            f.write(f"\n\\{n}-grams:\n")
            for g in sorted(t):
                lp, bo = t[g]
                f.write(f"{lp:.6f}\t{' '.join(g)}" + (f"\t{bo:.6f}" if bo is not None else "") + "\n")
        f.write("\n\\end\\\n")
    return {"order": order, "ngrams": [len(t) for t in tables]}
