#!/usr/bin/env python
"""Run the SPLAT variants (config/variants/*.yaml) on the mini corpora: Table 3 and Table 4 of the paper.

    python examples/splat/run_variants.py --corpus CORPUS_DIR --work exp/splat_mini [--seeds 3] \
        [--bert packaged:all-minilm-l6-v2] [--fractions 1.0 0.1] [--jobs 2]

CORPUS_DIR is a speech corpus with ``train`` (speech for pre-training; its transcripts are the paired
data of the alignment, ``--align-split``), ``train_paired`` (the transcripts of the MLM adaptation) and
``valid`` splits (``speechlm corpus mini``). Steps, each skipped when its output exists (re-running a
finished run only prints the tables):

 1. fbank + per-speaker CMVN for the corpus; the mini intent and spoken-QA corpora (synthesized)
 2. per seed: MLM adaptation of the language module; speech-module pre-training (splat_pretraining)
 3. per seed: alignment, seq / tok x original / MLM-adapted language module (splat_alignment)
 4. per seed and variant: intent accuracy and spoken-QA AOS / frame F1 on the test split at the epoch that
    is best on valid, with 100% and 10% of the downstream training data (Table 3, Figure 3); the QA model
    reads the question through the frozen language module
 5. geometry (Table 4): S_avg and S_closest of s1 on the corpus's valid split for every variant, the spread
    of the gap with random neighbours (``chance sd``: the noise floor on a split this small), and the same
    scores of the text vectors t1 and of the L_seq target themselves (what an exact copy would reach)

Seed k (1..--seeds) is ``common.seed`` of every training step of that seed (pre-training, MLM,
alignment, downstream), so the spread covers the whole pipeline. Independent steps run ``--jobs`` at a
time, one thread each. Outputs: the tables, ``WORK/results.json`` (per variant ``intent_acc``,
``intent_acc_10pct``, ``qa_aos``, ``qa_aos_10pct``, ``qa_f1``, ``qa_f1_10pct``, ``s_avg``, ``s_closest``;
a list over seeds when ``--seeds`` > 1) and ``WORK/results.png``.

All models are tiny (see MINI below) so the whole run fits a CPU; the numbers show the pipeline at toy
scale, not the paper's figures.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

from omegaconf import OmegaConf

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(HERE, "config")
BIN = os.path.dirname(sys.executable)
VARIANTS = ["scratch", "speech", "seq", "seq_mlm", "tok", "tok_mlm"]
# the steps behind the comparison the paper headlines (Seq-MLM > Speech > Scratch, low-resource intent, QA)
HEADLINE = {"pretrain", "mlm", "align_seq_mlm"} | {
    f"{task}_{v}_{pct}" for v in ("scratch", "speech", "seq_mlm") for task, pct in (("intent", 10), ("qa", 100))}

# tiny speech module for the mini recipe (the paper: 3 x 768 x 12 heads at 100 Hz; here 4 stacked
# frames per position, 25 Hz, so that a CPU trains every variant in minutes)
MINI_SPEECH = [
    "model.encoder_layers=3", "model.encoder_embed_dim=128", "model.encoder_ffn_embed_dim=512",
    "model.encoder_attention_heads=4", "model.input_stride=4",
]
MINI_QA = ["model.qa_layers=2", "model.qa_embed_dim=128", "model.qa_ffn_embed_dim=512",
           "model.qa_attention_heads=4"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Step:
    """One command whose output goes to a log file; ``done`` marks it finished; CPU time is measured."""

    def __init__(self, name: str, cmd: List[str], logfile: str, done: str, after=(), priority: int = 0):
        self.name, self.cmd, self.logfile, self.done, self.after = name, cmd, logfile, done, list(after)
        self.priority = priority
        self.cpu: Optional[float] = None
        self.proc = None

    def finished(self) -> bool:
        return os.path.exists(self.done)

    def cpu_seconds(self) -> Optional[float]:
        """The CPU time the step took, from its ``done`` file (None: not finished, or finished by an older
        version of this script that did not record it)."""
        try:
            return float(json.load(open(self.done))["cpu_s"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


def run_steps(steps: List[Step], jobs: int) -> None:
    """Run ``steps`` (dependencies in ``after``) with ``jobs`` at a time; exit with the log's tail on
    failure. Each finished step's ``done`` file records its CPU and wall seconds, so that a ``--report``
    (or a re-run) reads the cost of exactly the steps that have finished, even while this runs."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    todo = [s for s in steps if not s.finished()]
    running: Dict[int, Step] = {}
    while todo or running:
        ready = sorted((s for s in todo if all(d.finished() for d in s.after)), key=lambda s: s.priority)
        while ready and len(running) < jobs:
            s = ready.pop(0)
            todo.remove(s)
            os.makedirs(os.path.dirname(s.logfile), exist_ok=True)
            log(f"start {s.name}")
            s.t0 = time.time()
            with open(s.logfile, "w") as f:
                s.proc = subprocess.Popen(s.cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
            running[s.proc.pid] = s
        if not running:
            sys.exit("steps wait for steps that cannot run: " + ", ".join(s.name for s in todo))
        pid, status, usage = os.wait4(-1, 0)
        s = running.pop(pid, None)
        if s is None:
            continue
        rc = os.waitstatus_to_exitcode(status)
        if rc != 0:
            for other in running.values():
                other.proc.kill()
            tail = open(s.logfile).read()[-3000:]
            sys.exit(f"step {s.name} failed (rc={rc}): {' '.join(s.cmd)}\n--- {s.logfile} ---\n{tail}")
        s.cpu = usage.ru_utime + usage.ru_stime
        os.makedirs(os.path.dirname(s.done), exist_ok=True)
        with open(s.done, "w") as f:
            json.dump({"cpu_s": round(s.cpu, 2), "wall_s": round(time.time() - s.t0, 2)}, f)
        log(f"done  {s.name}: {time.time() - s.t0:.0f} s wall, {s.cpu:.0f} s CPU")


def idle_estimate(steps: List[Step], timing: Dict[str, float], jobs: int) -> float:
    """Wall time of ``steps`` on an idle machine with ``jobs`` cores: the same list scheduling, each step
    taking its measured CPU time (one thread each)."""
    end: Dict[str, float] = {}
    free = [0.0] * jobs
    pending = [s for s in steps if s.name in timing]
    while pending:
        ready = [s for s in pending if all(d.name in end for d in s.after if d.name in timing)]
        s = ready[0]
        pending.remove(s)
        start = max([min(free)] + [end[d.name] for d in s.after if d.name in end])
        k = free.index(min(free))
        free[k] = end[s.name] = start + timing[s.name]
    return max(end.values(), default=0.0)


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
            key = metric if frac == 1.0 else f"{metric}_{int(round(frac * 100))}pct"
            ms = [mean_sd(results[v].get(key, [])) for v in vs]
            a.bar([i + (k - 0.5) * w for i in x], [m for m, _ in ms], w, yerr=[s for _, s in ms], capsize=3,
                  label=f"{int(round(frac * 100))}% of the training data")
        a.set_title(title)
    for a in ax:
        a.set_xticks(list(x))
        a.set_xticklabels([names[v].replace("SPLAT-", "") for v in vs], rotation=20)
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="mini corpus (train, train_paired, valid)")
    p.add_argument("--work", default="exp/splat_mini", help="output directory")
    p.add_argument("--bert", default="packaged:all-minilm-l6-v2", help="language module directory")
    p.add_argument("--text-pooling", default="mean", choices=("cls", "mean"),
                   help="t1 for L_seq and the geometry: mean for a sentence-embedding model (MiniLM, whose "
                        "[CLS] is nearly constant), cls for a real BERT")
    p.add_argument("--seeds", type=int, default=1, help="seeds 1..N of the whole pipeline")
    p.add_argument("--jobs", type=int, default=2, help="steps run at once (one thread each)")
    p.add_argument("--report", action="store_true",
                   help="run nothing: tabulate the steps already finished (cells show n= when seeds are missing)")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    p.add_argument("--pretrain-updates", type=int, default=400)
    p.add_argument("--align-split", default="train",
                   help="paired split of the alignment (the mini corpus's train has transcripts)")
    p.add_argument("--align-updates", type=int, default=180)
    p.add_argument("--align-lr", type=float, default=1e-3)
    p.add_argument("--no-center-text", dest="center_text", action="store_false",
                   help="L_seq on t1 as it is (default: t1 minus the mean t1 of the alignment transcripts)")
    p.add_argument("--text-whiten", type=int, default=0,
                   help="L_seq target: top-k PCA-whitened centred t1 (task.text_whiten; 0 = off)")
    p.add_argument("--seq-loss", default="l1", choices=("l1", "contrastive"),
                   help="L_seq: l1 (the paper) or contrastive (in-batch InfoNCE on cosines)")
    p.add_argument("--mlm-split", default="train_paired")
    p.add_argument("--mlm-steps", type=int, default=60)
    p.add_argument("--intent-epochs", type=int, default=16)
    p.add_argument("--intent-batch", type=int, default=32)
    p.add_argument("--intent-lr", type=float, default=1e-3, help="the paper's 3e-4 is for 768-d models")
    p.add_argument("--qa-epochs", type=int, default=4)
    p.add_argument("--qa-lr", type=float, default=1e-3)
    args = p.parse_args()
    t0, cpu0 = time.time(), time.process_time()
    W = os.path.abspath(args.work)
    corpus = os.path.abspath(args.corpus)
    os.makedirs(os.path.join(W, "logs"), exist_ok=True)
    L = lambda name: os.path.join(W, "logs", name + ".log")
    speechlm = [sys.executable, "-m", "speechlm"]
    seeds = list(range(1, args.seeds + 1))
    ck = os.path.join(W, "ckpt")

    def train(name, config_dir, config_name, overrides, after=(), priority=0):
        save = os.path.join(ck, name)
        cmd = [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", os.path.join(CONFIG, config_dir),
               "--config-name", config_name, f"common.user_dir={os.path.join(REPO, 'speechlm')}",
               f"checkpoint.save_dir={save}", "common.log_interval=10"] + overrides
        return Step(name, cmd, L(name), os.path.join(save, "done"), after, priority)

    def priority(seed, key=None):
        """The steps of the comparison the paper headlines (Seq-MLM / Speech / Scratch on intent with 10%
        of the data and on spoken QA) first, seed by seed; then the other cells, seed by seed."""
        return seed if key in HEADLINE else len(seeds) + seed

    # 1. features and the mini SLU corpora
    intent, qa = os.path.join(W, "intent"), os.path.join(W, "qa")
    prep = [Step("features", speechlm + ["splat", "features", corpus, "--splits", "train", "train_paired",
                                         "valid"], L("features"), os.path.join(corpus, "valid.fbank.done"))]
    if os.path.exists(os.path.join(corpus, "valid.fbank.npy")):
        prep = []
    prep += [Step(verb, speechlm + ["splat", verb, out], L(verb), os.path.join(out, "done"))
             for verb, out in (("slu-corpus", intent), ("qa-corpus", qa))]
    feats = prep[0] if prep and prep[0].name == "features" else None
    variants = {v: OmegaConf.load(os.path.join(CONFIG, "variants", f"{v}.yaml")) for v in args.variants}
    names = {v: str(c.name) for v, c in variants.items()}

    steps = list(prep)
    speech_ckpt, bert, init = {}, {}, {}
    for seed in seeds:
        sfx = f"_s{seed}"
        # 2. MLM adaptation and pre-training
        bert_mlm = os.path.join(W, f"bert_mlm{sfx}")
        mlm = Step(f"adapt_bert{sfx}", speechlm + [
            "splat", "adapt-bert", args.bert, corpus, "--split", args.mlm_split, "--out", bert_mlm,
            "--steps", str(args.mlm_steps), "--batch-size", "16", "--lr", "1e-4", "--seed", str(seed)],
            L(f"adapt_bert{sfx}"), os.path.join(bert_mlm, "done"), priority=priority(seed, "mlm"))
        pre = train(f"speech{sfx}", "pretrain", "speech_module", [
            f"task.data={corpus}", f"common.seed={seed}", f"optimization.max_update={args.pretrain_updates}",
            "lr_scheduler.warmup_updates=60", "optimization.lr=[0.0005]", "dataset.max_tokens=8000",
            "task.max_frames=800", "checkpoint.save_interval_updates=0"] + MINI_SPEECH,
            after=[feats] if feats else [], priority=priority(seed, "pretrain"))
        steps += [pre]
        if any(c.mlm for c in variants.values()):
            steps.append(mlm)
        speech_ckpt[seed] = os.path.join(ck, f"speech{sfx}", "checkpoint_last.pt")
        bert[seed] = {False: args.bert, True: bert_mlm}
        # 3. alignment
        for v, c in variants.items():
            if not c.pretrain:
                init[v, seed] = ("", [s for s in prep if s.name != "features"])
            elif c.alignment is None:
                init[v, seed] = (speech_ckpt[seed], [pre])
            else:
                name = f"align_{c.alignment}{'_mlm' if c.mlm else ''}{sfx}"
                # ~6 updates per epoch on the 192 train transcripts; validate at the end only
                epochs = max(1, args.align_updates // 6)
                a = train(name, "align", str(c.alignment), [
                    f"task.data={corpus}", f"task.bert_path={bert[seed][bool(c.mlm)]}",
                    f"task.text_pooling={args.text_pooling}", f"task.center_text={args.center_text}",
                    f"task.text_whiten={args.text_whiten}", f"criterion.seq_loss={args.seq_loss}",
                    f"model.init_from={speech_ckpt[seed]}",
                    f"dataset.train_subset={args.align_split}", f"task.idf_split={args.align_split}",
                    f"common.seed={seed}", f"optimization.max_update={args.align_updates}",
                    f"optimization.max_epoch={epochs + 1}", f"optimization.lr=[{args.align_lr}]",
                    "lr_scheduler.warmup_updates=10", f"dataset.validate_interval={epochs + 1}"],
                    after=[pre] + ([mlm] if c.mlm else []), priority=priority(seed, name[: -len(sfx)]))
                steps.append(a)
                init[v, seed] = (os.path.join(ck, name, "checkpoint_last.pt"), [a])

    # 4. downstream
    down = {}
    for seed in seeds:
        for v in variants:
            ckpt, after = init[v, seed]
            after = after + [s for s in prep if s.name != "features"]
            for frac in args.fractions:
                tag = f"{v}_{int(round(frac * 100))}pct_s{seed}"
                common = [f"model.init_from={ckpt}", f"task.train_fraction={frac}", f"common.seed={seed}",
                          "dataset.valid_subset='valid,test'", "checkpoint.no_save=true"] + MINI_SPEECH
                si = train(f"intent_{tag}", "downstream", "intent", [
                    f"task.data={intent}", f"optimization.max_epoch={args.intent_epochs}",
                    f"dataset.batch_size={args.intent_batch}", f"optimization.lr=[{args.intent_lr}]",
                    "dataset.validate_interval=2"] + common,
                    after=after, priority=priority(seed, f"intent_{v}_{int(round(frac * 100))}"))
                sq = train(f"qa_{tag}", "downstream", "spoken_qa", [
                    f"task.data={qa}", f"task.bert_path={args.bert}", f"optimization.max_epoch={args.qa_epochs}",
                    f"optimization.lr=[{args.qa_lr}]"] + common + MINI_QA, after=after,
                    priority=priority(seed, f"qa_{v}_{int(round(frac * 100))}"))
                steps += [si, sq]
                down[v, frac, seed] = (si, sq)

    if not args.report:
        run_steps(steps, args.jobs)

    results = {v: {} for v in variants}

    def put(v, key, val):
        results[v].setdefault(key, []).append(round(val, 4))

    for (v, frac, seed), (si, sq) in down.items():
        sfx = "" if frac == 1.0 else f"_{int(round(frac * 100))}pct"
        results[v].setdefault(f"intent_acc{sfx}", [])
        results[v].setdefault(f"qa_aos{sfx}", [])
        results[v].setdefault(f"qa_f1{sfx}", [])
        if si.finished():
            put(v, f"intent_acc{sfx}", best_on_valid(si.logfile, "accuracy")["accuracy"])
        if sq.finished():
            q = best_on_valid(sq.logfile, "aos", also=("f1",))
            put(v, f"qa_aos{sfx}", q["aos"])
            put(v, f"qa_f1{sfx}", q["f1"])

    # 5. geometry, in this process (one language module load per BERT)
    t_geo = time.process_time()
    import torch

    torch.set_num_threads(1)
    from speechlm.data.fbank import SpeakerFeatures
    from speechlm.data.splat_text import read_transcripts
    from speechlm.splat.geometry import (
        geometry_scores,
        load_speech_module,
        random_neighbour_gaps,
        text_geometry_scores,
        text_sentence_vectors,
        utterance_vectors,
    )
    from speechlm.splat.targets import SentenceTarget

    feats_valid = SpeakerFeatures(corpus, "valid")
    texts = read_transcripts(corpus, "valid")
    t1_cache, text_geo, target_geo = {}, {}, {}
    align_texts = read_transcripts(corpus, args.align_split)
    for seed in seeds:
        for v, c in variants.items():
            b = bert[seed][bool(c.mlm)]
            ckpt, made_by = init[v, seed]
            if not all(step.finished() for step in made_by):
                continue  # --report before this seed's pre-training / alignment finished
            if b not in t1_cache:
                t1_cache[b] = text_sentence_vectors(b, texts, args.text_pooling)
                text_geo[b] = text_geometry_scores(t1_cache[b])
                # the L_seq target itself (centred / whitened as the alignment fits it on its transcripts)
                fitted = SentenceTarget.fit(text_sentence_vectors(b, align_texts, args.text_pooling),
                                            args.center_text, args.text_whiten)
                target_geo[b] = geometry_scores(fitted(t1_cache[b]), t1_cache[b])
            if not ckpt:  # SPLAT-Scratch: the randomly initialised speech module of seed k
                from speechlm.models.splat_speech import SplatSpeechConfig, SplatSpeechEncoder

                torch.manual_seed(seed)
                enc = SplatSpeechEncoder(SplatSpeechConfig(
                    **{f.split("=")[0][len("model."):]: int(f.split("=")[1]) for f in MINI_SPEECH})).eval()
            else:
                enc = load_speech_module(ckpt)
            s1 = utterance_vectors(enc, feats_valid)
            g = geometry_scores(s1, t1_cache[b])
            put(v, "s_avg", g["S_avg"])
            put(v, "s_closest", g["S_closest"])
            # the spread of the gap with random instead of text neighbours: its noise floor on this split
            put(v, "gap_chance_sd", random_neighbour_gaps(s1).std().item())
    geometry_cpu = time.process_time() - t_geo

    # tables
    print()
    print("Table 3 (mini): intent accuracy % / spoken-QA AOS % / frame F1 % on test, best epoch on valid"
          + (f"; mean±sd over {len(seeds)} seeds" if len(seeds) > 1 else ""))
    w = 17 if len(seeds) > 1 else 8
    print(" " * 16 + "".join(f"{f'-- {int(round(f * 100))}% train --':^{3 * w + 2}}" for f in args.fractions))
    print(f"{'variant':<16}" + "".join(f"{'intent':>{w}}{'AOS':>{w}}{'F1':>{w}}  " for _ in args.fractions))
    for v in variants:
        row = f"{names[v]:<16}"
        for frac in args.fractions:
            sfx = "" if frac == 1.0 else f"_{int(round(frac * 100))}pct"
            row += "".join(cell(results[v][f"{k}{sfx}"], w, 1, len(seeds)) for k in ("intent_acc", "qa_aos", "qa_f1")) + "  "
        print(row)
    print()
    print(f"Table 4 (mini): cosine geometry of s1 on the corpus's valid split ({len(texts)} utterances; "
          f"neighbours by the language module's t1, {args.text_pooling} pooling)")
    gw = max(w, len("S_closest") + 2)  # the header must not run into its neighbour
    print(f"{'model':<20}{'S_avg':>{gw}}{'S_closest':>{gw}}{'gap':>{gw}}{'chance sd':>{gw}}")
    for v in variants:
        s_avg, s_closest = results[v].setdefault("s_avg", []), results[v].setdefault("s_closest", [])
        gap = [c - a for a, c in zip(s_avg, s_closest)]
        print(f"{names[v]:<20}{cell(s_avg, gw, 3, len(seeds))}{cell(s_closest, gw, 3, len(seeds))}"
              f"{cell(gap, gw, 3, len(seeds))}{cell(results[v].setdefault('gap_chance_sd', []), gw, 3, len(seeds))}")
    transformed = args.center_text or args.text_whiten
    for b, g in text_geo.items():
        for label, gg, what in [("t1 itself", g, "t1")] + (
                [("L_seq target", target_geo[b], "the L_seq target")] if transformed else []):
            label += " (MLM)" if "bert_mlm" in b else ""
            print(f"{label:<20}{gg['S_avg']:>{gw}.3f}{gg['S_closest']:>{gw}.3f}"
                  f"{gg['S_closest'] - gg['S_avg']:>{gw}.3f}   <- an exact copy of {what} ({os.path.basename(b)})")
    # a single seed is reported as one number, several as a list per seed
    out = {v: {k: (x if len(seeds) > 1 else (x[0] if x else None)) for k, x in r.items()} for v, r in results.items()}
    out["_meta"] = {"seeds": seeds, "fractions": args.fractions, "text_pooling": args.text_pooling,
                    "bert": args.bert, "center_text": args.center_text, "text_whiten": args.text_whiten,
                    "seq_loss": args.seq_loss,
                    "text_geometry": {os.path.basename(b): g for b, g in text_geo.items()},
                    "target_geometry": {os.path.basename(b): g for b, g in target_geo.items()}}
    json.dump(out, open(os.path.join(W, "results.json"), "w"), indent=1)
    plot(results, names, os.path.join(W, "results.png"), args.fractions)
    # the cost of the finished steps, from their done files (written by whichever call ran them)
    timing = {s.name: s.cpu_seconds() for s in steps if s.finished()}
    unknown = sorted(n for n, c in timing.items() if c is None)
    timing = {n: c for n, c in timing.items() if c is not None}
    cpu = sum(timing.values()) + geometry_cpu
    idle = idle_estimate(steps, timing, args.jobs) + geometry_cpu
    print(f"\nresults: {os.path.join(W, 'results.json')}, {os.path.join(W, 'results.png')}")
    print(f"wall time of this call {time.time() - t0:.0f} s (CPU {time.process_time() - cpu0:.0f} s)")
    missing = len(steps) - len(timing) - len(unknown)
    gaps = ([f"{missing} not finished"] if missing else []) + (
        [f"{len(unknown)} finished without a record"] if unknown else [])
    scope = f"the {len(timing)} of {len(steps)} steps with a recorded cost ({', '.join(gaps)})" if gaps else "all steps"
    print(f"CPU time of {scope} and the geometry: {cpu:.0f} s; on an idle {args.jobs}-core machine (the same "
          f"schedule, each step taking its measured CPU time) about {idle / 60:.1f} min")


if __name__ == "__main__":
    main()
