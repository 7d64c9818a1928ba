"""`speechlm st compare`: speech translation from several encoders under one protocol, side by side.

Every row trains ``speechlm_st`` (the recipe's ST config: the same data, updates and decoder for every row;
the mini config keeps the encoder frozen) on one encoder -- a pre-trained ``speechlm`` checkpoint, or the same
architecture from random weights -- for each seed, then decodes ``--split`` with ``fairseq-generate --scoring sacrebleu`` (BLEU) and scores
chrF on the same detokenized hypotheses. The copy-the-source baseline is the row named ``copy``.

    speechlm st compare ST_DATA OUT --row "SpeechLM-P=runs/SpeechLM-P.s{seed}/pretrain/checkpoint_last.pt" \\
        --row "random weights=random:runs/speech-only.s{seed}/pretrain/checkpoint_last.pt" --seeds 1 2 3

``--override KEY=VALUE ...`` changes the training config of every row. ``{seed}`` in a checkpoint path is the seed of the run. ``random:CKPT`` takes only the shapes from CKPT.
Writes, under OUT:

- ``runs/ROW.sSEED/``: the checkpoints (``checkpoint_best.pt`` by valid loss), ``train.log``,
  ``generate.log`` (fairseq's console output), ``tb/`` (TensorBoard), ``time.json`` (wall, user and sys
  seconds of training and decoding), ``score.json``; a finished step is skipped when run again;
- ``results.json``: one object per row (``name``, ``bleu``, ``chrf``, ``seconds`` = CPU seconds of training
  and decoding, ``wall_seconds``, ``valid_loss`` at the last validation, per seed in ``seeds``, ``*_std`` with
  several seeds), ``copy`` last;
- ``results.png`` (valid loss per update, BLEU and chrF per row); the table on the console.
"""
import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

from speechlm.errors import UserError

RANDOM_PREFIX = "random:"
BLEU_LINE = re.compile(r"Generate \S+ with beam=\d+: BLEU = ([\d.]+)")
# beam search copies the encoder output of the batch at every step (fairseq's reorder_encoder_out): one batch of
# the whole mini test set (20,000 frames) spent more CPU in those copies than in the model (half of it sys time)
DECODE_MAX_FRAMES = 4000
MAX_LEN_A = 0.002  # characters per input sample at most: 32 a second
VALID_LINE = re.compile(r"valid on '\S+' subset \| loss ([\d.]+) .*?\| num_updates (\d+)")


@dataclass(frozen=True)
class Row:
    name: str
    checkpoint: str  # may hold "{seed}"
    random_weights: bool = False

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9.-]+", "-", self.name).strip("-")

    def checkpoint_for(self, seed: int) -> str:
        return self.checkpoint.replace("{seed}", str(seed))


def parse_row(spec: str) -> Row:
    """``NAME=CKPT`` or ``NAME=random:CKPT`` -> Row."""
    name, sep, ckpt = spec.partition("=")
    if not sep or not name.strip() or not ckpt.strip():
        raise UserError(f"--row {spec!r}: expected NAME=CHECKPOINT or NAME=random:CHECKPOINT")
    if name.strip() == "copy":
        raise UserError("--row copy: the name 'copy' is the copy-the-source baseline's; choose another")
    rnd = ckpt.startswith(RANDOM_PREFIX)
    return Row(name.strip(), ckpt[len(RANDOM_PREFIX):] if rnd else ckpt, rnd)


def add_args(p):
    p.add_argument("data", help="directory written by `speechlm st prepare` (fairseq speech_to_text data)")
    p.add_argument("out", help="output directory (runs/, results.json, results.png)")
    p.add_argument("--row", action="append", required=True, metavar="NAME=CKPT",
                   help="a row: NAME=PRETRAINED.pt, or NAME=random:PRETRAINED.pt for its architecture from random "
                        "weights; '{seed}' in the path is the run's seed. Repeat for each row, in table order")
    p.add_argument("--seeds", type=int, nargs="+", default=[1], help="seeds of every row (default: 1)")
    p.add_argument("--config-dir", default="examples/mini/config/st", help="hydra config dir (default: %(default)s)")
    p.add_argument("--config-name", default="speechlm_st_tiny", help="hydra config (default: %(default)s)")
    p.add_argument("--split", default="test", help="split to decode and score (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="threads per run (default: %(default)s)")
    p.add_argument("--beam", type=int, default=5, help="beam size (default: %(default)s)")
    p.add_argument("--cpu", action="store_true", help="train and decode on the CPU even if a GPU is there "
                   "(without it fairseq takes the GPU when torch sees one)")
    p.add_argument("--png", default=None, help="figure (default: OUT/results.png)")
    p.add_argument("--override", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="hydra overrides for every row's training (e.g. optimization.max_update=400)")


# ------------------------------------------------------------------------------------------ running


def _timed(cmd: List[str], log: str, env: dict, cwd: Optional[str] = None) -> Dict[str, float]:
    """Run ``cmd`` with its output into ``log``; its wall, user and sys seconds (its own and its children's)."""
    t0 = time.time()
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        with open(log, encoding="utf-8", errors="replace") as f:
            tail = "".join(f.readlines()[-15:])
        raise UserError(f"{cmd[0]} failed (exit {proc.returncode}); log {log}, its last lines:\n{tail}")
    return {"wall": time.time() - t0, "user": usage.ru_utime, "sys": usage.ru_stime}


def _write_json(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _tool(name: str) -> str:
    """A console script of this Python's environment (fairseq-hydra-train, fairseq-generate)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else name


def train_run(args, row: Row, seed: int, run_dir: str, env: dict) -> Optional[Dict[str, float]]:
    """Fine-tune one row with one seed; its time (None when it was already done)."""
    if os.path.isfile(os.path.join(run_dir, "train.done")):
        return None
    ckpt = row.checkpoint_for(seed)
    if not os.path.isfile(ckpt):
        raise UserError(f"row {row.name!r}: {ckpt}: no such checkpoint (run the pre-training first)")
    import speechlm

    cmd = [_tool("fairseq-hydra-train"), "--config-dir", os.path.abspath(args.config_dir),
           "--config-name", args.config_name, f"task.data={os.path.abspath(args.data)}",
           f"model.w2v_path={os.path.abspath(ckpt)}", f"model.no_pretrained_weights={str(row.random_weights).lower()}",
           f"common.user_dir={os.path.dirname(speechlm.__file__)}", f"common.seed={seed}",
           f"common.tensorboard_logdir={run_dir}/tb", f"checkpoint.save_dir={run_dir}",
           f"hydra.run.dir={run_dir}/hydra", f"common.cpu={str(args.cpu).lower()}", *args.overrides]
    t = _timed(cmd, os.path.join(run_dir, "train.log"), env)
    _write_json(os.path.join(run_dir, "time.train.json"), t)
    open(os.path.join(run_dir, "train.done"), "w").close()
    return t


def read_generate(log: str):
    """fairseq-generate's output -> (BLEU, detokenized hypotheses, references), in sample-id order."""
    hyps, refs, bleu = {}, {}, None
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith("D-"):
                k, _, h = line.rstrip("\n").split("\t", 2)
                hyps[int(k[2:])] = h
            elif line.startswith("T-"):
                k, r = line.rstrip("\n").split("\t", 1)
                refs[int(k[2:])] = r
            else:
                m = BLEU_LINE.search(line)
                if m:
                    bleu = float(m.group(1))
    if bleu is None or not hyps or sorted(hyps) != sorted(refs):
        raise UserError(f"{log}: no BLEU line or hypotheses without references: is it fairseq-generate's output "
                        "with --scoring sacrebleu?")
    ids = sorted(hyps)
    return bleu, [hyps[i] for i in ids], [refs[i] for i in ids]


def decode_run(args, run_dir: str, env: dict) -> dict:
    """Decode ``args.split`` with the run's best checkpoint; ``{"bleu", "chrf", "n", "time"}`` (cached)."""
    import sacrebleu

    score_path = os.path.join(run_dir, "score.json")
    if os.path.isfile(score_path):
        with open(score_path, encoding="utf-8") as f:
            return json.load(f)
    import speechlm

    log = os.path.join(run_dir, "generate.log")
    # the longest output: MAX_LEN_A * samples + 10 (with raw audio fairseq's src_len counts samples); the
    # mini corpus's fastest utterance has 0.0016 characters per sample (26 a second). fairseq's default (0 * len + 200)
    # cuts long sentences, and a model that does not stop runs to the decoder's 1024 positions
    cmd = [_tool("fairseq-generate"), os.path.abspath(args.data), "--user-dir", os.path.dirname(speechlm.__file__),
           "--task", "speech_to_text", "--config-yaml", "config.yaml",
           "--path", os.path.join(run_dir, "checkpoint_best.pt"), "--gen-subset", args.split,
           "--beam", str(args.beam), "--max-tokens", str(DECODE_MAX_FRAMES), "--required-batch-size-multiple", "1",
           "--max-len-a", str(MAX_LEN_A), "--max-len-b", "10", "--scoring", "sacrebleu"]
    if args.cpu:
        cmd.append("--cpu")
    t = _timed(cmd, log, env)
    bleu, hyps, refs = read_generate(log)
    score = {"bleu": bleu, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score, "n": len(hyps), "time": t,
             "bleu_detail": str(sacrebleu.corpus_bleu(hyps, [refs]))}
    _write_json(score_path, score)
    return score


def run_one(args, row: Row, seed: int, out: str, env: dict) -> dict:
    run_dir = os.path.join(out, "runs", f"{row.slug}.s{seed}")
    os.makedirs(run_dir, exist_ok=True)
    print(f"  {row.name} (seed {seed}): training -> {run_dir}", flush=True)
    train_run(args, row, seed, run_dir, env)
    with open(os.path.join(run_dir, "time.train.json"), encoding="utf-8") as f:
        t_train = json.load(f)
    score = decode_run(args, run_dir, env)
    t_dec = score["time"]
    cpu = t_train["user"] + t_train["sys"] + t_dec["user"] + t_dec["sys"]
    print(f"  {row.name} (seed {seed}): BLEU {score['bleu']:.2f}, chrF {score['chrf']:.1f} "
          f"({cpu:.0f} CPU s)", flush=True)
    return {"name": row.name, "seed": seed, "bleu": score["bleu"], "chrf": score["chrf"],
            "bleu_detail": score["bleu_detail"], "seconds": cpu, "wall_seconds": t_train["wall"] + t_dec["wall"],
            "train_cpu_seconds": t_train["user"] + t_train["sys"], "valid_loss": valid_curve(run_dir),
            "run": os.path.relpath(run_dir, out)}


def valid_curve(run_dir: str) -> List[List[float]]:
    """``[[update, valid loss], ...]`` from fairseq's training log."""
    pts = []
    with open(os.path.join(run_dir, "train.log"), encoding="utf-8", errors="replace") as f:
        for line in f:
            m = VALID_LINE.search(line)
            if m:
                pts.append([int(m.group(2)), float(m.group(1))])
    return pts


def run_all(args, rows: Sequence[Row]) -> List[dict]:
    """Every (row, seed), ``args.jobs`` at a time; the per-seed results in row order."""
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "PYTHONHASHSEED": "0"}
    todo = [(r, s) for s in args.seeds for r in rows]
    results: Dict[tuple, dict] = {}
    errors: List[str] = []
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                if not todo or errors:
                    return
                row, seed = todo.pop(0)
            try:
                res = run_one(args, row, seed, args.out, env)
                with lock:
                    results[(row.name, seed)] = res
            except UserError as e:
                with lock:
                    errors.append(f"{row.name} (seed {seed}): {e}")

    threads = [threading.Thread(target=worker) for _ in range(max(1, args.jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise UserError("\n".join(errors))
    return [results[(r.name, s)] for r in rows for s in args.seeds]


# ------------------------------------------------------------------------------------------ reporting


def aggregate(runs: List[dict], names: Sequence[str]) -> List[dict]:
    """One object per row name: the mean over seeds (``*_std``: the sample standard deviation)."""
    import statistics

    out = []
    for name in names:
        rs = [r for r in runs if r["name"] == name]
        row = {"name": name, "seeds": [{k: r[k] for k in ("seed", "bleu", "chrf", "seconds", "run")} for r in rs]}
        for k in ("bleu", "chrf", "seconds", "wall_seconds"):
            vals = [r[k] for r in rs]
            row[k] = statistics.fmean(vals)
            if len(vals) > 1:
                row[k + "_std"] = statistics.stdev(vals)
        # the valid loss at the last validation: while BLEU is near 0, the finer measure of what the decoder learnt
        last = [r["valid_loss"][-1][1] for r in rs if r.get("valid_loss")]
        if last and len(last) == len(rs):
            row["valid_loss"] = statistics.fmean(last)
            if len(last) > 1:
                row["valid_loss_std"] = statistics.stdev(last)
        if len(rs) == 1:
            row["bleu_detail"] = rs[0]["bleu_detail"]
        out.append(row)
    return out


def copy_row(data: str, split: str) -> dict:
    import sacrebleu

    from speechlm.corpora.st import read_tsv

    rows = read_tsv(os.path.join(data, f"{split}.tsv"))
    hyps = [r["src_text"].lower() for r in rows]
    refs = [r["tgt_text"] for r in rows]
    bleu = sacrebleu.corpus_bleu(hyps, [refs])
    return {"name": "copy", "bleu": bleu.score, "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
            "seconds": 0.0, "bleu_detail": str(bleu),
            "note": "the lower-cased English transcript as the translation"}


def format_table(rows: List[dict], split: str) -> str:
    def cell(r, k, fmt):
        s = fmt.format(r[k])
        return s + (" ± " + fmt.format(r[k + "_std"]) if k + "_std" in r else "")

    copy = next((r for r in rows if r["name"] == "copy"), None)
    lines = [f"| row | {split} BLEU | chrF | BLEU / copy's | valid loss | seeds | CPU s per run |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['bleu'] / copy['bleu']:.0f}x" if copy and copy["bleu"] > 0 and r is not copy else "–"
        n = len(r.get("seeds", [])) or "–"
        loss = cell(r, "valid_loss", "{:.3f}") if "valid_loss" in r else "–"
        lines.append(f"| {r['name']} | {cell(r, 'bleu', '{:.2f}')} | {cell(r, 'chrf', '{:.1f}')} | {ratio} | {loss} "
                     f"| {n} | {r['seconds']:.0f} |")
    return "\n".join(lines)


def plot(runs: List[dict], rows: List[dict], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_bleu) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors: Dict[str, str] = {}
    for r in runs:
        c = colors.setdefault(r["name"], f"C{len(colors)}")
        first = r["seed"] == min(x["seed"] for x in runs if x["name"] == r["name"])
        if r["valid_loss"]:
            ax_loss.plot(*zip(*r["valid_loss"]), "-o", ms=3, color=c, label=r["name"] if first else None)
    ax_loss.set(title="ST valid loss (label-smoothed CE)", xlabel="update", ylabel="loss")
    ax_loss.grid(alpha=0.3)
    if ax_loss.get_legend_handles_labels()[0]:
        ax_loss.legend(fontsize=8)
    x = list(range(len(rows)))
    for k, (key, off, label) in enumerate((("bleu", -0.2, "BLEU"), ("chrf", 0.2, "chrF"))):
        bars = ax_bleu.bar([i + off for i in x], [r[key] for r in rows], 0.4,
                           yerr=[r.get(key + "_std", 0.0) for r in rows], label=label, color=f"C{k}")
        ax_bleu.bar_label(bars, fmt="%.1f", fontsize=7)
    ax_bleu.set_xticks(x, [r["name"] for r in rows], rotation=15, ha="right", fontsize=8)
    ax_bleu.set(title="speech translation into Cipherese (synthetic)", ylabel="score")
    ax_bleu.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    tmp = png + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, png)
    plt.close(fig)


def run(args) -> int:
    rows = [parse_row(s) for s in args.row]
    if len({r.slug for r in rows}) != len(rows):
        raise UserError("--row: two rows have the same name; give each row its own")
    if not os.path.isfile(os.path.join(args.data, "config.yaml")):
        raise UserError(f"{args.data}/config.yaml: not found; run `speechlm st prepare` first")
    os.makedirs(args.out, exist_ok=True)
    runs = run_all(args, rows)
    results = aggregate(runs, [r.name for r in rows]) + [copy_row(args.data, args.split)]
    _write_json(os.path.join(args.out, "results.json"), results)
    _write_json(os.path.join(args.out, "runs.json"), runs)
    png = args.png or os.path.join(args.out, "results.png")
    plot(runs, results, png)
    print(format_table(results, args.split))
    print(f"results: {os.path.join(args.out, 'results.json')}; figure: {png}; "
          f"TensorBoard: {os.path.join(args.out, 'runs', '*', 'tb')}")
    return 0
