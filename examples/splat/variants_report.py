"""The report of ``run_variants.py``: the downstream scores read from the finished steps' fairseq logs, the
geometry of s1 (Table 4, computed here), the two tables, ``WORK/results.json``, ``WORK/results.png`` and the
cost of the finished steps."""
import json
import os
import re
import sys
import time
from typing import Dict, List

from scheduler import idle_estimate, recorded_costs
from variants_graph import MINI_SPEECH, VariantGraph, percent

VALID_RE = re.compile(r"valid on '(\w+)' subset \|(.*)")


def best_on_valid(logfile: str, metric: str, also=()):
    """{metric: test value, ...} at the validation round where valid's ``metric`` is highest."""
    rounds, cur = [], {}
    for line in open(logfile):
        m = VALID_RE.search(line)
        if not m:
            continue
        vals = dict(kv.strip().split(" ", 1) for kv in m.group(2).split("|") if kv.strip().count(" ") >= 1)
        cur[m.group(1)] = {k: float(vals[k]) for k in (metric, *also)}
        if "valid" in cur and "test" in cur:
            rounds.append(cur)
            cur = {}
    if not rounds:
        sys.exit(f"{logfile}: no validation rounds with both valid and test")
    return max(rounds, key=lambda r: r["valid"][metric])["test"]


def mean_sd(xs):
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    sd = (sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) ** 0.5 if len(xs) > 1 else 0.0
    return m, sd


def cell(xs, width=13, digits=1, seeds=1):
    m, sd = mean_sd(xs)
    text = f"{m:.{digits}f}±{sd:.{digits}f}" if len(xs) > 1 else f"{m:.{digits}f}" if xs else "-"
    return (text + (f" n={len(xs)}" if 0 < len(xs) < seeds else "")).rjust(width)


def suffix(frac: float) -> str:
    return "" if frac == 1.0 else f"_{percent(frac)}pct"


class Results:
    """Per variant, per key (``intent_acc``, ``qa_aos_10pct``, ``s_avg``, ...), one value per finished seed."""

    def __init__(self, variants):
        self.values: Dict[str, Dict[str, List[float]]] = {v: {} for v in variants}

    def put(self, v: str, key: str, val: float) -> None:
        self.values[v].setdefault(key, []).append(round(val, 4))

    def get(self, v: str, key: str) -> List[float]:
        return self.values[v].setdefault(key, [])


def downstream_scores(g: VariantGraph, results: Results) -> None:
    """Intent accuracy and spoken-QA AOS / frame F1 on test at the epoch best on valid, of the finished steps."""
    for (v, frac, seed), (si, sq) in g.down.items():
        sfx = suffix(frac)
        for key in ("intent_acc", "qa_aos", "qa_f1"):
            results.get(v, key + sfx)
        if si.finished():
            results.put(v, f"intent_acc{sfx}", best_on_valid(si.logfile, "accuracy")["accuracy"])
        if sq.finished():
            q = best_on_valid(sq.logfile, "aos", also=("f1",))
            results.put(v, f"qa_aos{sfx}", q["aos"])
            results.put(v, f"qa_f1{sfx}", q["f1"])


class TextGeometry:
    """t1 of the valid transcripts per language module (loaded once each), their own geometry and that of
    the L_seq target (centred / whitened as the alignment fits it on its transcripts)."""

    def __init__(self, corpus: str, args):
        from speechlm.data.splat_text import read_transcripts

        self.args = args
        self.texts = read_transcripts(corpus, "valid")
        self.align_texts = read_transcripts(corpus, args.align_split)
        self.t1, self.text_geo, self.target_geo = {}, {}, {}

    def vectors(self, bert: str):
        from speechlm.splat.geometry import geometry_scores, text_geometry_scores, text_sentence_vectors
        from speechlm.splat.targets import SentenceTarget

        if bert not in self.t1:
            pooling = self.args.text_pooling
            self.t1[bert] = text_sentence_vectors(bert, self.texts, pooling)
            self.text_geo[bert] = text_geometry_scores(self.t1[bert])
            fitted = SentenceTarget.fit(text_sentence_vectors(bert, self.align_texts, pooling),
                                        self.args.center_text, self.args.text_whiten)
            self.target_geo[bert] = geometry_scores(fitted(self.t1[bert]), self.t1[bert])
        return self.t1[bert]


def _speech_module(ckpt: str, seed: int):
    """The speech module of a checkpoint, or for ``""`` (SPLAT-Scratch) the random one of seed ``seed``."""
    import torch

    from speechlm.splat.geometry import load_speech_module

    if ckpt:
        return load_speech_module(ckpt)
    from speechlm.models.splat_speech import SplatSpeechConfig, SplatSpeechEncoder

    torch.manual_seed(seed)
    sizes = {f.split("=")[0][len("model."):]: int(f.split("=")[1]) for f in MINI_SPEECH}
    return SplatSpeechEncoder(SplatSpeechConfig(**sizes)).eval()


def geometry(g: VariantGraph, args, results: Results) -> TextGeometry:
    """Step 5, in this process: S_avg / S_closest of s1 on valid for every variant whose model is made, and
    the spread of the gap with random neighbours (its noise floor on this split)."""
    import torch

    torch.set_num_threads(1)
    from speechlm.data.fbank import SpeakerFeatures
    from speechlm.splat.geometry import geometry_scores, random_neighbour_gaps, utterance_vectors

    feats_valid = SpeakerFeatures(g.corpus, "valid")
    text = TextGeometry(g.corpus, args)
    for seed in g.seeds:
        for v, c in g.variants.items():
            ckpt, made_by = g.init[v, seed]
            if not all(step.finished() for step in made_by):
                continue  # --report before this seed's pre-training / alignment finished
            t1 = text.vectors(g.bert[seed][bool(c.mlm)])
            s1 = utterance_vectors(_speech_module(ckpt, seed), feats_valid)
            scores = geometry_scores(s1, t1)
            results.put(v, "s_avg", scores["S_avg"])
            results.put(v, "s_closest", scores["S_closest"])
            results.put(v, "gap_chance_sd", random_neighbour_gaps(s1).std().item())
    return text


def print_table3(g: VariantGraph, args, results: Results) -> None:
    n = len(g.seeds)
    print()
    print("Table 3 (mini): intent accuracy % / spoken-QA AOS % / frame F1 % on test, best epoch on valid"
          + (f"; mean±sd over {n} seeds" if n > 1 else ""))
    w = 17 if n > 1 else 8
    print(" " * 16 + "".join(f"{f'-- {percent(f)}% train --':^{3 * w + 2}}" for f in args.fractions))
    print(f"{'variant':<16}" + "".join(f"{'intent':>{w}}{'AOS':>{w}}{'F1':>{w}}  " for _ in args.fractions))
    for v, name in g.names.items():
        row = f"{name:<16}"
        for frac in args.fractions:
            row += "".join(cell(results.get(v, k + suffix(frac)), w, 1, n) for k in ("intent_acc", "qa_aos", "qa_f1"))
            row += "  "
        print(row)


def print_table4(g: VariantGraph, args, results: Results, text: TextGeometry) -> None:
    n = len(g.seeds)
    print()
    print(f"Table 4 (mini): cosine geometry of s1 on the corpus's valid split ({len(text.texts)} utterances; "
          f"neighbours by the language module's t1, {args.text_pooling} pooling)")
    gw = max(17 if n > 1 else 8, len("S_closest") + 2)  # the header must not run into its neighbour
    print(f"{'model':<20}{'S_avg':>{gw}}{'S_closest':>{gw}}{'gap':>{gw}}{'chance sd':>{gw}}")
    for v, name in g.names.items():
        s_avg, s_closest = results.get(v, "s_avg"), results.get(v, "s_closest")
        gap = [c - a for a, c in zip(s_avg, s_closest)]
        print(f"{name:<20}{cell(s_avg, gw, 3, n)}{cell(s_closest, gw, 3, n)}"
              f"{cell(gap, gw, 3, n)}{cell(results.get(v, 'gap_chance_sd'), gw, 3, n)}")
    transformed = args.center_text or args.text_whiten
    for b, tg in text.text_geo.items():
        for label, gg, what in [("t1 itself", tg, "t1")] + (
                [("L_seq target", text.target_geo[b], "the L_seq target")] if transformed else []):
            label += " (MLM)" if "bert_mlm" in b else ""
            print(f"{label:<20}{gg['S_avg']:>{gw}.3f}{gg['S_closest']:>{gw}.3f}"
                  f"{gg['S_closest'] - gg['S_avg']:>{gw}.3f}   <- an exact copy of {what} ({os.path.basename(b)})")


def write_results(g: VariantGraph, args, results: Results, text: TextGeometry) -> str:
    """``WORK/results.json`` (a single seed as one number per key, several as a list per seed) and the PNG."""
    multi = len(g.seeds) > 1
    out = {v: {k: (x if multi else (x[0] if x else None)) for k, x in r.items()} for v, r in results.values.items()}
    out["_meta"] = {"seeds": g.seeds, "fractions": args.fractions, "text_pooling": args.text_pooling,
                    "bert": args.bert, "center_text": args.center_text, "text_whiten": args.text_whiten,
                    "seq_loss": args.seq_loss,
                    "text_geometry": {os.path.basename(b): x for b, x in text.text_geo.items()},
                    "target_geometry": {os.path.basename(b): x for b, x in text.target_geo.items()}}
    path = os.path.join(g.work, "results.json")
    json.dump(out, open(path, "w"), indent=1)
    plot(results.values, g.names, os.path.join(g.work, "results.png"), args.fractions)
    return path


def print_cost(g: VariantGraph, jobs: int, geometry_cpu: float, t0: float, cpu0: float) -> None:
    """The cost of the finished steps, from their done files (written by whichever call ran them)."""
    timing, unknown = recorded_costs(g.steps)
    cpu = sum(timing.values()) + geometry_cpu
    idle = idle_estimate(g.steps, timing, jobs) + geometry_cpu
    print(f"\nresults: {os.path.join(g.work, 'results.json')}, {os.path.join(g.work, 'results.png')}")
    print(f"wall time of this call {time.time() - t0:.0f} s (CPU {time.process_time() - cpu0:.0f} s)")
    missing = len(g.steps) - len(timing) - len(unknown)
    gaps = ([f"{missing} not finished"] if missing else []) + (
        [f"{len(unknown)} finished without a record"] if unknown else [])
    n = len(g.steps)
    scope = f"the {len(timing)} of {n} steps with a recorded cost ({', '.join(gaps)})" if gaps else "all steps"
    print(f"CPU time of {scope} and the geometry: {cpu:.0f} s; on an idle {jobs}-core machine (the same "
          f"schedule, each step taking its measured CPU time) about {idle / 60:.1f} min")


def plot(results, names, path, fractions):
    import logging

    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # before the import, which logs at DEBUG
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vs = list(results)
    x = range(len(vs))
    fig, ax = plt.subplots(1, 3, figsize=(16, 4.2))
    w = 0.38
    for k, (key, label) in enumerate((("s_avg", "S_avg"), ("s_closest", "S_closest"))):
        ms = [mean_sd(results[v].get(key, [])) for v in vs]
        ax[0].bar([i + (k - 0.5) * w for i in x], [m for m, _ in ms], w, yerr=[s for _, s in ms], label=label,
                  capsize=3)
    ax[0].set_title("geometry of s1 on valid (Table 4)")
    for a, (metric, title) in zip(ax[1:], (("intent_acc", "intent accuracy % (test)"),
                                           ("qa_aos", "spoken-QA AOS % (test)"))):
        for k, frac in enumerate(fractions):
            ms = [mean_sd(results[v].get(metric + suffix(frac), [])) for v in vs]
            a.bar([i + (k - 0.5) * w for i in x], [m for m, _ in ms], w, yerr=[s for _, s in ms], capsize=3,
                  label=f"{percent(frac)}% of the training data")
        a.set_title(title)
    for a in ax:
        a.set_xticks(list(x))
        a.set_xticklabels([names[v].replace("SPLAT-", "") for v in vs], rotation=20)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
