#!/usr/bin/env python
"""How large can S_closest - S_avg get for an s1 that is a function of the text vector t1?

    PYTHONPATH=. python examples/splat/diagnostics/target_ceiling.py CORPUS \
        [--bert packaged:all-minilm-l6-v2 ...] [--fit-split train] [--eval-split valid]

The geometry of Table 4 fixes the neighbours (the utterance whose text t1 is closest, here mean-pooled t1
as ``run_variants.py`` uses) and measures cosines in the speech space. An s1 that copied a target f(t1)
exactly would score the geometry of f(t1) with those neighbours: that is the gap an L1/L2 regression onto
f(t1) aims at. Per language module, for f in {identity, centring, PCA whitening (all / top-k components),
[CLS] variants}, fitted on the ``--fit-split`` transcripts (the alignment data) and applied to
``--eval-split``; also the ceiling as a function of the number of utterances (random subsets of the fit
split), since S_closest is a nearest-neighbour maximum that grows with N.
"""
import argparse

import torch

from speechlm.data.splat_text import read_transcripts
from speechlm.splat.geometry import geometry_scores, text_sentence_vectors


def whiten(fit: torch.Tensor, k: int = 0, eps: float = 1e-6):
    """x -> PCA-whitened x (top k components, all of rank when k = 0), fitted on ``fit`` (N, H)."""
    mu = fit.mean(0)
    u, s, vt = torch.linalg.svd(fit - mu, full_matrices=False)
    var = s ** 2 / (len(fit) - 1)
    keep = var > eps * var[0]
    if k:
        keep[k:] = False
    proj = vt[keep].T / var[keep].sqrt()
    return lambda x: (x - mu) @ proj


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpus")
    p.add_argument("--bert", nargs="+", default=["packaged:all-minilm-l6-v2"])
    p.add_argument("--fit-split", default="train")
    p.add_argument("--eval-split", default="valid")
    p.add_argument("--subsets", type=int, nargs="*", default=[23, 64, 192])
    args = p.parse_args()
    fit_texts = read_transcripts(args.corpus, args.fit_split)
    eval_texts = read_transcripts(args.corpus, args.eval_split)
    for bert in args.bert:
        fit = {q: text_sentence_vectors(bert, fit_texts, q) for q in ("mean", "cls")}
        ev = {q: text_sentence_vectors(bert, eval_texts, q) for q in ("mean", "cls")}
        nb = ev["mean"]  # the neighbours of Table 4 as run_variants.py defines them
        print(f"--- {bert}: targets fitted on {args.fit_split} ({len(fit_texts)}), geometry on "
              f"{args.eval_split} ({len(eval_texts)}), neighbours by mean-pooled t1")
        rows = []
        for q in ("mean", "cls"):
            name = "mean pooling" if q == "mean" else "[CLS]"
            mu = fit[q].mean(0)
            rows += [(name, ev[q]), (f"{name}, centred", ev[q] - mu)]
            for k in (0, 64, 32, 16, 8):
                if k and k >= len(fit_texts):
                    continue
                rows.append((f"{name}, PCA-whitened{f' top {k}' if k else ''}", whiten(fit[q], k)(ev[q])))
        for name, v in rows:
            g = geometry_scores(v, nb)
            print(f"{name:<36} S_avg {g['S_avg']:6.3f}  S_closest {g['S_closest']:6.3f}  "
                  f"gap {g['S_closest'] - g['S_avg']:+.3f}")
        gen = torch.Generator().manual_seed(0)
        for n in args.subsets:
            if n > len(fit_texts):
                continue
            gaps = {"mean": [], "centred": []}
            for _ in range(20):
                idx = torch.randperm(len(fit_texts), generator=gen)[:n]
                v = fit["mean"][idx]
                for key, x in (("mean", v), ("centred", v - fit["mean"].mean(0))):
                    g = geometry_scores(x, v)
                    gaps[key].append(g["S_closest"] - g["S_avg"])
            print(f"copy of t1 on {n:4d} random {args.fit_split} sentences (20 draws): gap "
                  + ", ".join(f"{k} {torch.tensor(x).mean():+.3f} ± {torch.tensor(x).std():.3f}"
                              for k, x in gaps.items()))


if __name__ == "__main__":
    main()
