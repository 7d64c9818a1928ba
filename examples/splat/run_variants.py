#!/usr/bin/env python
"""Run the SPLAT variants (config/variants/*.yaml) on the mini corpora and print a Table-3-style table.

    python examples/splat/run_variants.py --corpus CORPUS_DIR --work exp/splat_mini \
        [--bert packaged:all-minilm-l6-v2] [--fractions 1.0 0.1]

CORPUS_DIR is a speech corpus with ``train`` (unlabelled speech for pre-training), ``train_paired`` (the
paired speech/text for alignment and MLM adaptation) and ``valid`` splits (``speechlm corpus mini``).
Steps, each skipped when its output exists (re-running a finished run only prints the tables):

 1. fbank + per-speaker CMVN for the corpus; the mini intent and spoken-QA corpora (synthesized)
 2. MLM adaptation of the BERT on the train_paired transcripts
 3. speech-module pre-training (splat_pretraining)
 4. alignment: seq / tok x original / MLM-adapted BERT (splat_alignment)
 5. downstream for every variant: intent accuracy and spoken-QA AOS / frame F1 on the test split at the
    epoch that is best on valid, with 100% and 10% of the downstream training data (Table 3, Figure 3)
 6. geometry (Table 4): S_avg and S_closest of s1 on the corpus's valid split before and after alignment

All models are tiny (see MINI below) so the whole run fits a CPU; the numbers show the pipeline, not the
paper's figures.
"""
import argparse
import os
import re
import resource
import subprocess
import sys
import time

from omegaconf import OmegaConf

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CONFIG = os.path.join(HERE, "config")
BIN = os.path.dirname(sys.executable)

# tiny speech module for the mini recipe (the paper: 3 x 768 x 12 heads at 100 Hz; here 4 stacked
# frames per position, 25 Hz, so that a CPU trains every variant in minutes)
MINI_SPEECH = [
    "model.encoder_layers=3", "model.encoder_embed_dim=128", "model.encoder_ffn_embed_dim=512",
    "model.encoder_attention_heads=4", "model.input_stride=4",
]
MINI_QA = ["model.qa_embed_dim=128", "model.qa_ffn_embed_dim=512", "model.qa_attention_heads=4"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(cmd, logfile):
    """Run ``cmd``; its output goes to ``logfile``; fail with the log's tail."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    t = time.time()
    with open(logfile, "w") as f:
        rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    if rc != 0:
        tail = open(logfile).read()[-3000:]
        sys.exit(f"command failed (rc={rc}): {' '.join(cmd)}\n--- {logfile} ---\n{tail}")
    return time.time() - t


def train(config_dir, config_name, save_dir, overrides, logfile):
    if os.path.exists(os.path.join(save_dir, "done")):
        return None
    cmd = [os.path.join(BIN, "fairseq-hydra-train"), "--config-dir", config_dir, "--config-name", config_name,
           f"common.user_dir={os.path.join(REPO, 'speechlm')}", f"checkpoint.save_dir={save_dir}",
           "common.log_interval=10"] + overrides
    dt = sh(cmd, logfile)
    open(os.path.join(save_dir, "done"), "w").close()
    return dt


VALID_RE = re.compile(r"valid on '(\w+)' subset \|(.*)")


def best_on_valid(logfile, metric):
    """The ``metric`` on test at the validation round where valid's ``metric`` is highest."""
    rounds, cur = [], {}
    for line in open(logfile):
        m = VALID_RE.search(line)
        if not m:
            continue
        vals = dict(kv.strip().split(" ", 1) for kv in m.group(2).split("|") if kv.strip().count(" ") >= 1)
        cur[m.group(1)] = float(vals[metric])
        if "valid" in cur and "test" in cur:
            rounds.append(cur)
            cur = {}
    if not rounds:
        sys.exit(f"{logfile}: no validation rounds with both valid and test")
    best = max(rounds, key=lambda r: r["valid"])
    return best["test"], best["valid"]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", required=True, help="mini corpus (train, train_paired, valid)")
    p.add_argument("--work", default="exp/splat_mini", help="output directory")
    p.add_argument("--bert", default="packaged:all-minilm-l6-v2", help="language module directory")
    p.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.1])
    p.add_argument("--variants", nargs="+", default=["scratch", "speech", "seq", "seq_mlm", "tok", "tok_mlm"])
    p.add_argument("--pretrain-updates", type=int, default=400)
    p.add_argument("--align-epochs", type=int, default=60,
                   help="the mini corpus has ~20 paired utterances: one update per epoch")
    p.add_argument("--mlm-steps", type=int, default=60)
    p.add_argument("--intent-epochs", type=int, default=20)
    p.add_argument("--intent-batch", type=int, default=32)
    p.add_argument("--intent-lr", type=float, default=1e-3, help="the paper's 3e-4 is for 768-d models")
    p.add_argument("--qa-epochs", type=int, default=5)
    p.add_argument("--qa-lr", type=float, default=1e-3)
    args = p.parse_args()
    t0 = time.time()
    W = os.path.abspath(args.work)
    corpus = os.path.abspath(args.corpus)
    os.makedirs(os.path.join(W, "logs"), exist_ok=True)
    L = lambda name: os.path.join(W, "logs", name + ".log")
    speechlm = [sys.executable, "-m", "speechlm"]

    # 1. features and the mini SLU corpora
    if not os.path.exists(os.path.join(corpus, "valid.fbank.npy")):
        log("fbank + per-speaker CMVN for the corpus")
        sh(speechlm + ["splat", "features", corpus, "--splits", "train", "train_paired", "valid"], L("features"))
    intent, qa = os.path.join(W, "intent"), os.path.join(W, "qa")
    for verb, out in (("slu-corpus", intent), ("qa-corpus", qa)):
        if not os.path.exists(os.path.join(out, "done")):
            log(f"speechlm splat {verb} {out}")
            sh(speechlm + ["splat", verb, out], L(verb))

    # 2. MLM adaptation
    bert_mlm = os.path.join(W, "bert_mlm")
    if not os.path.exists(os.path.join(bert_mlm, "config.json")):
        log("MLM adaptation of the language module")
        sh(speechlm + ["splat", "adapt-bert", args.bert, corpus, "--split", "train_paired", "--out", bert_mlm,
                       "--steps", str(args.mlm_steps), "--batch-size", "16", "--lr", "1e-4"], L("adapt_bert"))
    berts = {False: args.bert, True: bert_mlm}

    # 3. pre-training
    ck = os.path.join(W, "ckpt")
    speech_ckpt = os.path.join(ck, "speech", "checkpoint_last.pt")
    log("pre-training the speech module")
    train(os.path.join(CONFIG, "pretrain"), "speech_module", os.path.join(ck, "speech"),
          [f"task.data={corpus}", f"optimization.max_update={args.pretrain_updates}",
           "lr_scheduler.warmup_updates=60", "optimization.lr=[0.0005]", "dataset.max_tokens=8000",
           "task.max_frames=800", "checkpoint.save_interval_updates=0"] + MINI_SPEECH, L("pretrain"))

    # 4. alignment
    variants = {v: OmegaConf.load(os.path.join(CONFIG, "variants", f"{v}.yaml")) for v in args.variants}
    init = {}
    for v, c in variants.items():
        if not c.pretrain:
            init[v] = ""
        elif c.alignment is None:
            init[v] = speech_ckpt
        else:
            name = f"align_{c.alignment}{'_mlm' if c.mlm else ''}"
            log(f"alignment {name}")
            train(os.path.join(CONFIG, "align"), c.alignment, os.path.join(ck, name),
                  [f"task.data={corpus}", f"task.bert_path={berts[bool(c.mlm)]}", f"model.init_from={speech_ckpt}",
                   f"optimization.max_epoch={args.align_epochs}", "optimization.lr=[0.0003]",
                   "dataset.validate_interval=10", "lr_scheduler.warmup_updates=10"], L(name))
            init[v] = os.path.join(ck, name, "checkpoint_last.pt")

    # 5. downstream
    results = {}
    for v, c in variants.items():
        for frac in args.fractions:
            tag = f"{v}_{int(round(frac * 100))}pct"
            common = [f"model.init_from={init[v]}", f"task.train_fraction={frac}",
                      "dataset.valid_subset='valid,test'"] + MINI_SPEECH
            log(f"intent {tag}")
            train(os.path.join(CONFIG, "downstream"), "intent", os.path.join(ck, f"intent_{tag}"),
                  [f"task.data={intent}", f"optimization.max_epoch={args.intent_epochs}",
                   f"dataset.batch_size={args.intent_batch}", f"optimization.lr=[{args.intent_lr}]"] + common,
                  L(f"intent_{tag}"))
            acc, _ = best_on_valid(L(f"intent_{tag}"), "accuracy")
            log(f"qa {tag}")
            train(os.path.join(CONFIG, "downstream"), "spoken_qa", os.path.join(ck, f"qa_{tag}"),
                  [f"task.data={qa}", f"task.bert_path={args.bert}", f"optimization.max_epoch={args.qa_epochs}",
                   f"optimization.lr=[{args.qa_lr}]"] + common + MINI_QA, L(f"qa_{tag}"))
            aos, _ = best_on_valid(L(f"qa_{tag}"), "aos")
            f1, _ = best_on_valid(L(f"qa_{tag}"), "f1")
            results[(v, frac)] = (acc, aos, f1)

    # 6. geometry
    geo = []
    geo_ckpts = [("before alignment (SPLAT-Speech)", speech_ckpt, args.bert)] + [
        (f"after {os.path.basename(os.path.dirname(init[v]))}", init[v], berts[bool(c.mlm)])
        for v, c in variants.items() if c.alignment is not None
    ]
    for label, ckpt, bert in geo_ckpts:
        out = subprocess.run(speechlm + ["splat", "geometry", ckpt, "valid", "--data", corpus, "--bert", bert],
                             capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            sys.exit(out.stderr[-3000:])
        s_avg, s_closest = out.stdout.strip().splitlines()[-1].split()[-2:]
        geo.append((label, bert, float(s_avg), float(s_closest)))

    # tables
    print()
    print("Table 3 (mini): intent accuracy % / spoken-QA AOS % / frame F1 % on test, best epoch on valid")
    head = f"{'variant':<16}" + "".join(f"{'intent':>9}{'AOS':>7}{'F1':>7}  " for _ in args.fractions)
    print(" " * 16 + "".join(f"{f'-- {int(f * 100)}% train --':^25}" for f in args.fractions))
    print(head)
    for v, c in variants.items():
        row = f"{c.name:<16}"
        for frac in args.fractions:
            acc, aos, f1 = results[(v, frac)]
            row += f"{acc:9.1f}{aos:7.1f}{f1:7.1f}  "
        print(row)
    print()
    print("Table 4 (mini): cosine geometry of s1 on the corpus's valid split")
    print(f"{'model':<34}{'S_avg':>8}{'S_closest':>11}")
    for label, bert, s_avg, s_closest in geo:
        print(f"{label:<34}{s_avg:8.3f}{s_closest:11.3f}")
    cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"\ntotal wall time {time.time() - t0:.0f} s; CPU time of the steps {cpu.ru_utime + cpu.ru_stime:.0f} s")


if __name__ == "__main__":
    main()
