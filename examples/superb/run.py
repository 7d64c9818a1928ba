"""SUPERB in miniature: one command, on the embedded corpora (see examples/superb/README.md).

    python examples/superb/run.py [--exp exp/superb] [--mini-exp exp/mini] [--seeds 1 2 3]
        [--tasks PR ASR SID IC] [--upstreams fbank random speech-only SpeechLM-P SpeechLM-H] [--skip-missing]

Upstreams: the log-Mel FBANK row, random weights (the demo's pre-training architecture,
examples/mini/config/pretrain/speechlm_tiny.yaml), and the demo's speech-only, SpeechLM-P and SpeechLM-H
pre-trained checkpoints (``MINI_EXP/runs/<row>.s1/pretrain/checkpoint_last.pt``, made by
``bash examples/mini/run.sh --full --seeds 1 --exp MINI_EXP``). A missing checkpoint is refused with that
command, or its row left out with --skip-missing. The PR/ASR/SID data is the demo's corpus
(``MINI_EXP/corpus``); IC's is the SLU intent corpus, synthesized into ``EXP/slu`` when absent.

Writes EXP/results.json (per task and upstream: the seeds' scores, mean, spread, learned layer weights),
EXP/layer_weights.png, and prints the table.
"""
import argparse
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from speechlm import superb  # noqa: E402
from speechlm.errors import UserError  # noqa: E402

ROWS = {"speech-only": "speech-only", "SpeechLM-P": "SpeechLM-P", "SpeechLM-H": "SpeechLM-H"}
ARCHITECTURE = os.path.join(REPO, "examples/mini/config/pretrain/speechlm_tiny.yaml")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exp", default="exp/superb", help="output directory (results.json, layer_weights.png, slu/)")
    p.add_argument("--mini-exp", default="exp/mini", help="the demo's run (examples/mini/run.sh --exp)")
    p.add_argument("--corpus", help="PR/ASR/SID corpus (default: MINI_EXP/corpus)")
    p.add_argument("--slu", help="IC corpus (default: EXP/slu, synthesized when absent)")
    p.add_argument("--seed-row", type=int, default=1, help="which seed's demo checkpoints to read (runs/ROW.sN)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of the heads")
    p.add_argument("--tasks", nargs="+", default=list(superb.TASKS), choices=superb.TASKS)
    p.add_argument("--upstreams", nargs="+", default=["fbank", "random", *ROWS])
    p.add_argument("--skip-missing", action="store_true", help="leave out rows whose checkpoint is missing")
    p.add_argument("--train-split", default="train_paired", help="PR/ASR/SID training split of the corpus")
    p.add_argument("--test-split", default="test", help="PR/ASR/SID test split (training voices: SID needs them)")
    p.add_argument("--limit", type=int, help="at most this many utterances per split (tests)")
    p.add_argument("--epochs", type=float, default=1.0, help="scale every task's epochs (tests: small)")
    p.add_argument("--keep", action="store_true",
                   help="keep EXP/results.json's rows of other upstreams (same tasks, seeds and head settings): "
                        "add a row, e.g. SpeechLM-H once the demo has made it")
    p.add_argument("--jobs", type=int, default=2, help="upstreams evaluated at a time (one process, one thread each)")
    return p.parse_args(argv)


def cpu_seconds() -> float:
    """user + system CPU seconds of this process and its finished children (the upstream workers)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def upstreams(args):
    out = []
    for name in args.upstreams:
        if name == "fbank":
            out.append(superb.Upstream("FBANK", "fbank"))
        elif name == "random":
            out.append(superb.Upstream("random weights", "random", ARCHITECTURE, seed=0))
        elif name in ROWS:
            run = os.path.join(args.mini_exp, "runs", f"{ROWS[name]}.s{args.seed_row}", "pretrain")
            ckpt = os.path.join(run, "checkpoint_last.pt")
            if not os.path.isfile(os.path.join(run, "done")) or not os.path.isfile(ckpt):
                msg = (f"{ckpt}: the {name} checkpoint is missing (its pre-training has not finished); make it with "
                       f"`bash examples/mini/run.sh --full --seeds {args.seed_row} --exp {args.mini_exp}` "
                       f"(SpeechLM-H comes last), or leave the row out with --skip-missing")
                if not args.skip_missing:
                    raise UserError(msg)
                print(f"[superb] skipped: {msg}", file=sys.stderr)
                continue
            out.append(superb.Upstream(name, "checkpoint", ckpt))
        else:
            raise UserError(f"--upstreams {name}: unknown (fbank, random, {', '.join(ROWS)})")
    return out


def keep_rows(results: dict, previous: str) -> None:
    """Add ``previous``'s rows of the upstreams not run now (same protocol only, else a UserError)."""
    if not os.path.isfile(previous):
        return
    with open(previous) as f:
        old = json.load(f)
    for key in ("seeds", "head_config", "data"):
        if old.get(key) != results.get(key):
            raise UserError(f"{previous}: made with other {key} ({old.get(key)} vs {results.get(key)}); "
                            "--keep adds rows only under the same protocol")
    for up in old["upstreams"]:
        if up in results["upstreams"]:
            continue
        results["upstreams"].append(up)
        for task, rows in old["tasks"].items():
            if task in results["tasks"] and up in rows:
                results["tasks"][task][up] = rows[up]
        results["cpu_seconds"][up] = old["cpu_seconds"].get(up)


def main(argv=None) -> int:
    args = parse_args(argv)
    t0, c0 = time.time(), cpu_seconds()
    try:
        corpus = args.corpus or os.path.join(args.mini_exp, "corpus")
        if any(t != "IC" for t in args.tasks) and not os.path.isfile(os.path.join(corpus, "done")):
            raise UserError(f"{corpus}: no corpus (no 'done' marker); make it with `bash examples/mini/run.sh "
                            f"--stop-stage 1 --exp {args.mini_exp}` or `python -m speechlm corpus mini {corpus}`")
        slu = args.slu or os.path.join(args.exp, "slu")
        if "IC" in args.tasks and not os.path.isfile(os.path.join(slu, "done")):
            from speechlm.corpora.slu import build_intent_corpus

            print(f"[superb] synthesizing the SLU intent corpus -> {slu}", file=sys.stderr)
            build_intent_corpus(slu)
            open(os.path.join(slu, "done"), "w").close()
        tasks = {}
        for t in args.tasks:
            if t == "IC":
                tasks[t] = superb.TaskData(slu, "train", "test", args.limit, args.limit)
            else:
                tasks[t] = superb.TaskData(corpus, args.train_split, args.test_split, args.limit, args.limit)
        cfg = superb.HeadConfig()
        cfg.epochs = {t: max(1, round(e * args.epochs)) for t, e in cfg.epochs.items()}
        ups = upstreams(args)
        if not ups:
            raise UserError("no upstream to evaluate")
        print(f"[superb] {len(ups)} upstream(s) x {len(tasks)} task(s) x {len(args.seeds)} seed(s) -> {args.exp}",
              file=sys.stderr)
        old = os.path.join(args.exp, "results.json")
        if args.keep and os.path.isfile(old):
            os.replace(old, old + ".previous")
        results = superb.run_superb(ups, tasks, args.seeds, args.exp, cfg, jobs=args.jobs,
                                    log=lambda s: print(s, file=sys.stderr))
        if args.keep:
            keep_rows(results, os.path.join(args.exp, "results.json.previous"))
    except UserError as e:
        print(f"superb: {e}", file=sys.stderr)
        return 1
    results["wall_seconds"] = round(time.time() - t0, 1)
    results["cpu_seconds_total"] = round(cpu_seconds() - c0, 1)  # this process and its workers
    results["pattern"] = superb.pattern(results)
    with open(os.path.join(args.exp, "results.json.tmp"), "w") as f:
        json.dump(results, f, indent=1)
    os.replace(os.path.join(args.exp, "results.json.tmp"), os.path.join(args.exp, "results.json"))
    superb.plot_layer_weights(results, os.path.join(args.exp, "layer_weights.png"))
    print(superb.table(results))
    for task, line in results["pattern"].items():
        print(f"  {task}: {line}")
    print(f"[superb] {results['wall_seconds']} s wall, {results['cpu_seconds_total']} CPU-s -> "
          f"{args.exp}/results.json, {args.exp}/layer_weights.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
