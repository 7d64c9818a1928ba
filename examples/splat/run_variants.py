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

All models are tiny (see ``MINI_SPEECH`` in ``variants_graph.py``) so the whole run fits a CPU; the numbers
show the pipeline at toy scale, not the paper's figures. The steps are built by ``variants_graph.py``, run
by ``scheduler.py`` and reported (with the geometry, computed here) by ``variants_report.py``, beside this file.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # the modules beside this file
from scheduler import Step, idle_estimate, run_steps  # noqa: E402,F401  (Step, idle_estimate: for callers)
from variants_graph import REPO, VARIANTS, build_graph  # noqa: E402
from variants_report import (  # noqa: E402
    Results,
    downstream_scores,
    geometry,
    print_cost,
    print_table3,
    print_table4,
    write_results,
)


def parse_args(argv=None):
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
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t0, cpu0 = time.time(), time.process_time()
    work = os.path.abspath(args.work)
    os.makedirs(os.path.join(work, "logs"), exist_ok=True)
    graph = build_graph(args, work, os.path.abspath(args.corpus))
    if not args.report:
        run_steps(graph.steps, args.jobs, cwd=REPO)
    results = Results(graph.variants)
    downstream_scores(graph, results)
    t_geo = time.process_time()
    text = geometry(graph, args, results)
    geometry_cpu = time.process_time() - t_geo
    print_table3(graph, args, results)
    print_table4(graph, args, results, text)
    write_results(graph, args, results, text)
    print_cost(graph, args.jobs, geometry_cpu, t0, cpu0)


if __name__ == "__main__":
    main()
