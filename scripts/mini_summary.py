#!/usr/bin/env python
"""The mini recipe's comparison: ``results.json``, a PNG of the curves and WER bars, a printed table.

    python scripts/mini_summary.py --exp exp/mini [--png exp/mini/results.png]
    python scripts/mini_summary.py meta --exp exp/mini --run SpeechLM-P.s1 --name SpeechLM-P --seed 1 \\
        --order 3 --pretrain-updates 300          # what run.sh records of a run before it starts
    python scripts/mini_summary.py tokenizer --exp exp/mini            # stage 3's scores
    python scripts/mini_summary.py hidden-units exp/mini/hidden         # what hidden_units.sh made

Reads what ``examples/mini/run.sh`` leaves in ``EXP/runs/RUN/`` (one directory per row and seed):

- ``meta.json``: ``{"name": row name, "seed": int, "tensorboard": pre-training TensorBoard dir or null,
  "decode": decode dir}`` (paths relative to EXP);
- ``DECODE/{test,test_other}.{hypo,ref}.wrd``: ``WORDS (utterance-id)`` lines (``speechlm infer``);
  ``RUN/decode_lm/`` the same with the word 4-gram (beam search; ``setting``: the weights chosen on valid);
- ``time.*``: ``{"wall": s, "user": s, "sys": s}`` of each step (bash ``time``), summed per row with
  the files that ``meta.json``'s ``time_from`` lists;
- the pre-training TensorBoard events (fairseq's ``common.tensorboard_logdir``): ``umlm_acc_0/1``,
  ``uctc_loss``, ``text_ler`` per update, and ``num_updates``;

- ``shared_space/shared_space.json`` (``speechlm analyze shared-space`` on ``valid``: one object per Shared
  Transformer layer, 0 = its input, with ``same_phone_nn``, ``chance``, ``cka`` ...), carried by the row as
  ``shared_space`` (a run that re-uses another's pre-training, ``time_from``, shows that run's);

and ``EXP/units/score.{train,valid}.json`` (the phone-units tokenizer against the true alignments). When
``EXP/corpus/{test,test_other}.{tsv,spk}`` are there, the Viterbi letter error is also given per voice
(``cer_by_voice``), which shows what the unseen voices of ``test_other`` cost.
Rows with several seeds are reported as the mean, with the sample standard deviation as ``*_std``
and each seed's figures in ``seeds``.
"""
import argparse
import glob
import json
import os
import struct
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Tuple

SUBSETS = ("test", "test_other")
METRICS = ("test_wer", "test_cer", "test_other_wer", "test_other_cer")
LM_METRICS = tuple(m + "_lm" for m in METRICS)  # the same with the word 4-gram (fine-tuned rows only)


def read_trn(path: str, with_ids: bool = False) -> List:
    """``WORDS (utterance-id)`` lines -> the word strings (``(words, id)`` pairs with ``with_ids``), in file order."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            k = line.rfind(" (") if not line.startswith("(") else -1
            if not line.endswith(")") or (k < 0 and not line.startswith("(")):
                raise ValueError(f"{path}:{n}: expected 'WORDS (utterance-id)', got {line!r}")
            words = line[:k].strip() if k >= 0 else ""
            out.append((words, line[k + 2 if k >= 0 else 1:-1]) if with_ids else words)
    return out


def _read_pairs(decode_dir: str, subset: str) -> List[Tuple[str, str, str]]:
    """(hypothesis, reference, utterance id) of ``decode_dir/{subset}.{hypo,ref}.wrd``, line by line."""
    hyps = read_trn(os.path.join(decode_dir, f"{subset}.hypo.wrd"), with_ids=True)
    refs = read_trn(os.path.join(decode_dir, f"{subset}.ref.wrd"))
    if len(hyps) != len(refs):
        raise ValueError(f"{decode_dir}/{subset}: {len(hyps)} hypotheses but {len(refs)} references")
    return [(h, r, uid) for (h, uid), r in zip(hyps, refs)]


def _errors(h: str, r: str) -> Tuple[int, int, int, int]:
    """(word errors, reference words, letter errors, reference letters); letters without the spaces."""
    import editdistance

    hl, rl = h.replace(" ", ""), r.replace(" ", "")
    return editdistance.eval(h.split(), r.split()), len(r.split()), editdistance.eval(list(hl), list(rl)), len(rl)


def score_decode(decode_dir: str, subset: str) -> Tuple[float, float]:
    """(WER %, CER %) of ``decode_dir/{subset}.hypo.wrd`` against ``{subset}.ref.wrd``."""
    we = nw = ce = nc = 0
    for h, r, _ in _read_pairs(decode_dir, subset):
        e = _errors(h, r)
        we, nw, ce, nc = we + e[0], nw + e[1], ce + e[2], nc + e[3]
    return 100.0 * we / max(nw, 1), 100.0 * ce / max(nc, 1)


def voices(corpus: str, subset: str) -> Optional[Dict[str, str]]:
    """Utterance id (the manifest's path without ``.wav``, as ``speechlm infer`` writes it) -> voice, from
    ``corpus/{subset}.tsv`` and ``.spk``; None when the corpus has no speaker file."""
    tsv, spk = os.path.join(corpus, f"{subset}.tsv"), os.path.join(corpus, f"{subset}.spk")
    if not (os.path.isfile(tsv) and os.path.isfile(spk)):
        return None
    with open(tsv, encoding="utf-8") as f:
        ids = [os.path.splitext(line.split("\t")[0])[0] for line in f.read().splitlines()[1:] if line]
    with open(spk, encoding="utf-8") as f:
        names = f.read().split()
    if len(ids) != len(names):
        raise ValueError(f"{spk}: {len(names)} voices but {len(ids)} utterances in {tsv}")
    return dict(zip(ids, names))


def cer_by_voice(decode_dir: str, subset: str, voice_of: Dict[str, str]) -> Dict[str, float]:
    """Letter error % per voice of ``decode_dir/{subset}``; an utterance id missing from ``voice_of`` is an error."""
    errs: Dict[str, List[int]] = {}
    for h, r, uid in _read_pairs(decode_dir, subset):
        if uid not in voice_of:
            raise ValueError(f"{decode_dir}/{subset}.hypo.wrd: utterance {uid!r} is not in the corpus's {subset}.tsv")
        _, _, ce, nc = _errors(h, r)
        e = errs.setdefault(voice_of[uid], [0, 0])
        e[0], e[1] = e[0] + ce, e[1] + nc
    return {v: round(100.0 * e / max(n, 1), 2) for v, (e, n) in sorted(errs.items())}


def read_scalars(event_dir: str) -> Dict[str, List[Tuple[int, float]]]:
    """Scalars of the TensorBoard event files in ``event_dir``: ``{tag: [(step, value), ...]}``, by step."""
    from tensorboardX.proto import event_pb2

    out: Dict[str, Dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(event_dir, "events.out.tfevents.*"))):
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + 12 <= len(data):  # TFRecord: u64 length, u32 crc, payload, u32 crc
            (n,) = struct.unpack("<Q", data[pos:pos + 8])
            payload = data[pos + 12:pos + 12 + n]
            pos += 12 + n + 4
            if len(payload) < n:
                break  # a record still being written
            ev = event_pb2.Event.FromString(payload)
            for v in ev.summary.value:
                if v.HasField("simple_value"):
                    out.setdefault(v.tag, {})[int(ev.step)] = float(v.simple_value)
    return {tag: sorted(d.items()) for tag, d in out.items()}


def read_time(paths: List[str]) -> Dict[str, float]:
    """Summed ``{"wall", "cpu"}`` seconds of ``time.*`` files (bash ``time`` with a JSON TIMEFORMAT)."""
    wall = cpu = 0.0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            lines = [ln for ln in f.read().splitlines() if ln.startswith("{")]
        if not lines:
            raise ValueError(f"{path}: no '{{\"wall\": ..}}' line (was the step interrupted?)")
        t = json.loads(lines[-1])
        wall += float(t["wall"])
        cpu += float(t["user"]) + float(t["sys"])
    return {"wall": wall, "cpu": cpu}


def collect(exp: str) -> List[dict]:
    """One dict per run directory under ``exp/runs`` that has been decoded, sorted by row then seed."""
    runs = []
    voice_of = {s: voices(os.path.join(exp, "corpus"), s) for s in SUBSETS}
    for meta_path in sorted(glob.glob(os.path.join(exp, "runs", "*", "meta.json"))):
        run_dir = os.path.dirname(meta_path)
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        decode = os.path.join(exp, meta["decode"])
        if not all(os.path.isfile(os.path.join(decode, f"{s}.hypo.wrd")) for s in SUBSETS):
            continue
        run = {"name": meta["name"], "seed": int(meta.get("seed", 1)), "order": int(meta.get("order", 99))}
        for s in SUBSETS:
            run[f"{s}_wer"], run[f"{s}_cer"] = score_decode(decode, s)
        if all(voice_of.values()):
            run["cer_by_voice"] = {s: cer_by_voice(decode, s, voice_of[s]) for s in SUBSETS}
        decode_lm = os.path.join(run_dir, "decode_lm")
        if all(os.path.isfile(os.path.join(decode_lm, f"{s}.hypo.wrd")) for s in SUBSETS):
            for s in SUBSETS:
                run[f"{s}_wer_lm"], run[f"{s}_cer_lm"] = score_decode(decode_lm, s)
            setting = os.path.join(decode_lm, "setting")
            if os.path.isfile(setting):
                with open(setting, encoding="utf-8") as f:
                    run["lm_setting"] = f.read().strip()
        curves = {}
        if meta.get("tensorboard"):
            tb = os.path.join(exp, meta["tensorboard"])
            curves = read_scalars(os.path.join(tb, "train_inner"))
            valid = read_scalars(os.path.join(tb, "valid"))
            curves.update({f"valid_{k}": v for k, v in valid.items()})
        run["curves"] = curves
        steps = [s for v in curves.values() for s, _ in v]
        run["pretrain_updates"] = int(meta.get("pretrain_updates", max(steps) if steps else 0))
        # the run's own steps, plus those it re-uses (the zero-shot row: SpeechLM-P's pre-training)
        t = read_time(sorted(glob.glob(os.path.join(run_dir, "time.*")))
                      + [os.path.join(exp, p) for p in meta.get("time_from", [])])
        run["seconds"], run["cpu_seconds"] = round(t["wall"], 1), round(t["cpu"], 1)
        layers = read_shared_space(exp, run_dir, meta)
        if layers is not None:
            run["shared_space"] = layers
        heads = read_shared_space(exp, run_dir, meta, "cross_reading.json")
        if heads is not None:
            run["cross_reading"] = heads
        runs.append(run)
    runs.sort(key=lambda r: (r["order"], r["name"], r["seed"]))
    return runs


def read_shared_space(exp: str, run_dir: str, meta: dict, name: str = "shared_space.json"):
    """``RUN/shared_space/NAME`` (``shared_space.json``: a list per layer; ``cross_reading.json``: the heads on
    each view), or that of the run whose pre-training this one re-uses (``meta["time_from"]``: the zero-shot
    row is SpeechLM-P's model); None when there is none."""
    for d in [run_dir] + [os.path.dirname(os.path.join(exp, p)) for p in meta.get("time_from", [])]:
        path = os.path.join(d, "shared_space", name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                return json.load(f)
    return None


def mean_numbers(items: List[dict]) -> dict:
    """The mean over ``items`` of every number they all carry (``*_std`` with two items or more); ``layer`` and
    any key missing or not a number in one of them are left out."""
    import statistics

    row = {}
    for k in items[0]:
        vals = [x.get(k) for x in items]
        if k == "layer" or not all(isinstance(v, (int, float)) for v in vals):
            continue
        digits = 4 if k in ("mean_cos", "cka") else 2
        row[k] = round(statistics.fmean(vals), digits)
        if len(vals) > 1:
            row[k + "_std"] = round(statistics.stdev(vals), digits)
    return row


def mean_layers(per_seed: List[List[dict]]) -> List[dict]:
    """Per layer, the mean over seeds of every number of ``shared_space`` (``*_std`` with two seeds or more)."""
    return [{"layer": layers[0]["layer"], **mean_numbers(list(layers))} for layers in zip(*per_seed)]


def aggregate(runs: List[dict]) -> List[dict]:
    """Rows of ``results.json``: one per name, means over seeds (``*_std`` with two seeds or more)."""
    import statistics

    by_name: "OrderedDict[str, List[dict]]" = OrderedDict()
    for r in runs:
        by_name.setdefault(r["name"], []).append(r)
    rows = []
    for name, rs in by_name.items():
        row = {"name": name}
        for m in METRICS + LM_METRICS:
            if any(m not in r for r in rs):
                continue
            vals = [r[m] for r in rs]
            row[m] = round(statistics.fmean(vals), 2)
            if len(vals) > 1:
                row[m + "_std"] = round(statistics.stdev(vals), 2)
        if all("cer_by_voice" in r for r in rs):
            row["cer_by_voice"] = {s: {v: round(statistics.fmean(r["cer_by_voice"][s][v] for r in rs), 2)
                                       for v in rs[0]["cer_by_voice"][s]} for s in SUBSETS}
        if all("shared_space" in r for r in rs):
            row["shared_space"] = mean_layers([r["shared_space"] for r in rs])
        if all("cross_reading" in r for r in rs):
            row["cross_reading"] = mean_numbers([r["cross_reading"] for r in rs])
        row["pretrain_updates"] = rs[0]["pretrain_updates"]
        row["seconds"] = round(statistics.fmean(r["seconds"] for r in rs), 1)
        row["cpu_seconds"] = round(statistics.fmean(r["cpu_seconds"] for r in rs), 1)
        row["seeds"] = [{k: r[k] for k in ("seed", *METRICS, *LM_METRICS, "lm_setting", "seconds", "cpu_seconds")
                         if k in r} for r in rs]
        rows.append(row)
    return rows


def tokenizer_scores(exp: str) -> Dict[str, dict]:
    out = {}
    for split in ("train", "valid"):
        path = os.path.join(exp, "units", f"score.{split}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out[split] = json.loads(f.read().strip().splitlines()[-1])
    return out


def format_table(rows: List[dict], tokenizer: Dict[str, dict]) -> str:
    def cell(row, m):
        if m not in row:
            return "–"
        s = f"{row[m]:.1f}"
        return s + (f" ± {row[m + '_std']:.1f}" if m + "_std" in row else "")

    lines = ["| row | test WER / CER | test_other WER / CER | with the word 4-gram: test / test_other WER "
             "| pre-training updates | wall s | CPU s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {cell(r, 'test_wer')} / {cell(r, 'test_cer')} | "
                     f"{cell(r, 'test_other_wer')} / {cell(r, 'test_other_cer')} | "
                     f"{cell(r, 'test_wer_lm')} / {cell(r, 'test_other_wer_lm')} | {r['pretrain_updates']} | "
                     f"{r['seconds']:.0f} | {r['cpu_seconds']:.0f} |")
    by_voice = [r for r in rows if "cer_by_voice" in r]
    if by_voice:
        lines += ["", "Viterbi letter error % per voice (test_other's voices are heard nowhere in training):", "",
                  "| voice | " + " | ".join(r["name"] for r in by_voice) + " |",
                  "|---" * (len(by_voice) + 1) + "|"]
        for s in SUBSETS:
            for v in by_voice[0]["cer_by_voice"][s]:
                cells = [f"{r['cer_by_voice'][s].get(v, float('nan')):.1f}" for r in by_voice]
                lines.append(f"| {s}: {v} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines + format_shared_space(rows) + format_tokenizer(tokenizer))


def format_shared_space(rows: List[dict]) -> List[str]:
    """One line per row with a ``shared_space``: same-phone nearest-neighbour % and CKA per layer."""
    with_ss = [r for r in rows if "shared_space" in r]
    if not with_ss:
        return []
    lines = ["Shared space on `valid` (speechlm analyze shared-space): % of speech frames whose nearest text frame "
             "(another utterance's) has the same true phone, and linear CKA of time-paired frames, per layer "
             "from the Shared Transformer's input (0) to its top; the pre-training heads at the top on each view "
             "(UMLM unit accuracy %, UCTC letter error %):", "",
             "| row | same-phone NN % per layer (chance) | CKA per layer | UMLM on speech / text | "
             "UCTC on text / speech |", "|---|---|---|---|---|"]
    for r in with_ss:
        ss, heads = r["shared_space"], r.get("cross_reading", {})
        nn = " / ".join(f"{x['same_phone_nn']:.1f}" for x in ss)
        cka = " / ".join("–" if x.get("cka") is None else f"{x['cka']:.2f}" for x in ss)
        umlm = (f"{heads['umlm_acc_speech']:.1f} / {heads['umlm_acc_text']:.1f}"
                if "umlm_acc_speech" in heads else "–")
        uctc = f"{heads['uctc_ler_text']:.1f} / {heads['uctc_ler_speech']:.1f}" if "uctc_ler_text" in heads else "–"
        lines.append(f"| {r['name']} | {nn} ({ss[0]['chance']:.1f}) | {cka} | {umlm} | {uctc} |")
    return lines + [""]


def format_tokenizer(tokenizer: Dict[str, dict]) -> List[str]:
    """The phone-units tokenizer's scores (``tokenizer_scores``), one line per split (+ PER per voice)."""
    lines = []
    for split, s in tokenizer.items():
        acc, per = s.get("frame_accuracy"), s.get("phone_error_rate")
        lines.append(f"phone-units tokenizer (trained on train_paired) on `{split}` speech, against the true "
                     f"alignments: frame accuracy {_pct(acc)}, PER {_pct(per)}")
        if s.get("by_speaker"):
            lines.append("  PER per voice: " + ", ".join(f"{v} {_pct(x['phone_error_rate'])}"
                                                       for v, x in s["by_speaker"].items()))
    return lines


def _pct(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{100 * x:.1f} %" if x <= 1.0 else f"{x:.1f} %"


def _is_parallel(stage: str) -> bool:
    """run.sh's stages 4-6 (one key, e.g. "4-6", or "5" when run alone) run one chain per row in parallel."""
    first = stage.split("-")[0]
    return first.isdigit() and 4 <= int(first) <= 6


def timing(exp: str, jobs: int) -> Optional[dict]:
    """Wall and CPU seconds of the recipe's stages (``EXP/stage_times.tsv``, the largest entry per stage
    when a stage ran more than once) and an estimate of the wall time on an idle machine with ``jobs``
    cores: a serial stage takes its CPU time, the parallel block of stages 4-6 max(CPU / jobs, the CPU of its
    longest chain: a run directory's steps, ``time.*``)."""
    path = os.path.join(exp, "stage_times.tsv")
    if not os.path.isfile(path):
        return None
    stages: Dict[str, Tuple[float, float]] = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if len(parts) != 3:
                raise ValueError(f"{path}:{n}: expected 'STAGE WALL CPU', got {line!r}")
            wall, cpu = float(parts[1]), float(parts[2])
            if parts[0] not in stages or wall > stages[parts[0]][0]:
                stages[parts[0]] = (wall, cpu)
    idle = 0.0
    for stage, (wall, cpu) in stages.items():
        if not _is_parallel(stage):
            idle += cpu
            continue
        longest = 0.0
        for run_dir in glob.glob(os.path.join(exp, "runs", "*")):
            steps = sorted(glob.glob(os.path.join(run_dir, "time.*")))
            if steps:
                longest = max(longest, read_time(steps)["cpu"])
        idle += max(cpu / max(jobs, 1), longest)
    return {"stages": {k: {"wall": v[0], "cpu": v[1]} for k, v in sorted(stages.items())},
            "wall": sum(v[0] for v in stages.values()), "cpu": sum(v[1] for v in stages.values()),
            "idle_estimate": idle, "jobs": jobs}


def plot(runs: List[dict], rows: List[dict], png: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 4.8))
    ax_acc, ax_ctc, ax_wer = axes
    colors = {}
    for r in runs:
        if not r["curves"] or r["name"].endswith("zero-shot"):
            continue
        c = colors.setdefault(r["name"], f"C{len(colors)}")
        label = r["name"] if r["seed"] == min(x["seed"] for x in runs if x["name"] == r["name"]) else None
        for layer, style in ((0, ":"), (1, "-")):
            pts = r["curves"].get(f"umlm_acc_{layer}", [])
            if pts:
                ax_acc.plot(*zip(*pts), style, color=c,
                            label=f"{label} ({'speech' if layer == 0 else 'shared'} layer)" if label else None)
        pts = r["curves"].get("valid_umlm_acc_1", [])
        if pts:
            ax_acc.plot(*zip(*pts), "o", color=c, label=f"{label} (shared layer, valid)" if label else None)
        pts = r["curves"].get("uctc_loss", [])
        if pts:
            ax_ctc.plot(*zip(*pts), "-", color=c, label=label)
    ax_acc.set(title="UMLM masked-unit accuracy (train)", xlabel="pre-training update", ylabel="%")
    ax_ctc.set(title="UCTC loss on unpaired text (train)", xlabel="pre-training update", ylabel="nats per letter")
    for ax in (ax_acc, ax_ctc):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    x = range(len(rows))
    for k, (subset, off) in enumerate((("test", -0.3), ("test_other", 0.1))):
        vals = [r[f"{subset}_wer"] for r in rows]
        errs = [r.get(f"{subset}_wer_std", 0.0) for r in rows]
        bars = ax_wer.bar([i + off for i in x], vals, 0.2, yerr=errs, label=f"{subset} (Viterbi)", color=f"C{k}")
        ax_wer.bar_label(bars, fmt="%.0f", fontsize=6)
        lm = [i for i, r in enumerate(rows) if f"{subset}_wer_lm" in r]
        if lm:
            bars = ax_wer.bar([i + off + 0.2 for i in lm], [rows[i][f"{subset}_wer_lm"] for i in lm], 0.2,
                              yerr=[rows[i].get(f"{subset}_wer_lm_std", 0.0) for i in lm],
                              label=f"{subset} (word 4-gram)", color=f"C{k}", alpha=0.45, hatch="//")
            ax_wer.bar_label(bars, fmt="%.0f", fontsize=6)
    ax_wer.set_xticks(list(x), [r["name"] for r in rows], rotation=20, ha="right", fontsize=8)
    ax_wer.set(title="WER (fine-tuned on train_paired; zero-shot: not)", ylabel="WER %", ylim=(0, 135))
    ax_wer.legend(fontsize=7, ncol=2, loc="upper center")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)


def write_meta(exp: str, run: str, name: str, seed: int, order: int, pretrain_updates: int,
               time_from: Optional[str] = None) -> str:
    """``EXP/runs/RUN/meta.json``, what ``collect`` reads about a run: its row name, seed, order in the table,
    pre-training updates, TensorBoard dir (its own pre-training's; none for a run without pre-training or one
    that re-uses another's, ``time_from``: that run's ``time.*`` file, relative to EXP) and decode dir."""
    run_dir = os.path.join(exp, "runs", run)
    os.makedirs(run_dir, exist_ok=True)
    meta = {"name": name, "seed": seed, "order": order, "pretrain_updates": pretrain_updates,
            "tensorboard": f"runs/{run}/tb/pretrain" if pretrain_updates > 0 and not time_from else None,
            "decode": f"runs/{run}/decode", "time_from": [time_from] if time_from else []}
    path = os.path.join(run_dir, "meta.json")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(json.dumps(meta) + "\n")
    os.replace(path + ".tmp", path)
    return path


def best_valid(log: str, key: str) -> Optional[float]:
    """The highest ``key`` over the ``[valid]`` lines of a fairseq log (``... | INFO | valid | {json}``);
    None when no validation reported it (or there is no log)."""
    best = None
    if not os.path.isfile(log):
        return None
    with open(log, encoding="utf-8", errors="replace") as f:
        for line in f:
            if "[valid]" not in line or "{" not in line:
                continue
            try:
                value = json.loads(line[line.index("{"):]).get(key)
            except ValueError:
                continue  # a line cut short (the run was stopped)
            if value is not None:
                best = max(float(value), best if best is not None else float("-inf"))
    return best


def format_step_times(paths: List[str]) -> List[str]:
    """``step wall s CPU s`` lines of ``time.STEP`` files (``examples/common/recipe.sh``'s ``timed``)."""
    lines = [f"  {'step':24s} {'wall s':>8s} {'CPU s':>8s}"]
    for path in paths:
        t = read_time([path])
        lines.append(f"  {os.path.basename(path)[len('time.'):]:24s} {t['wall']:8.1f} {t['cpu']:8.1f}")
    return lines


def hidden_units_summary(out: str) -> List[str]:
    """What ``examples/mini/hidden_units.sh OUT`` made: k-means purity on valid, the t2u model's best unit
    accuracy on valid (from its fairseq log) against the most frequent unit's share, and each step's seconds."""
    from collections import Counter

    lines = []
    with open(os.path.join(out, "km", "score.valid.json"), encoding="utf-8") as f:
        score = json.load(f)
    lines.append("  k-means units on valid vs the true phones: "
                 + ", ".join(f"{k} {v:.3f}" for k, v in score.items() if isinstance(v, float)))
    acc = best_valid(os.path.join(out, "logs", "t2u_train.log"), "valid_unit_accuracy")
    with open(os.path.join(out, "t2u_data", "valid.km"), encoding="utf-8") as f:
        units = Counter(u for line in f for u in line.split())
    if acc is not None and units:
        top = 100 * units.most_common(1)[0][1] / sum(units.values())
        lines.append(f"  t2u on valid: unit accuracy {acc:.1f} % (best validation; the most frequent unit: "
                     f"{top:.1f} %)")
    steps = sorted(glob.glob(os.path.join(out, "logs", "time.*")), key=os.path.getmtime)
    return lines + format_step_times(steps)


def _action_parser(action: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"mini_summary.py {action}")
    if action == "meta":
        p.add_argument("--exp", required=True)
        p.add_argument("--run", required=True, help="run directory name under EXP/runs (row.sSEED)")
        p.add_argument("--name", required=True, help="the row's name in the table")
        p.add_argument("--seed", type=int, required=True)
        p.add_argument("--order", type=int, required=True, help="position of the row in the table")
        p.add_argument("--pretrain-updates", type=int, required=True, help="0: no pre-training")
        p.add_argument("--time-from", help="another run's time file (relative to EXP) whose cost this run re-uses")
    elif action == "tokenizer":
        p.add_argument("--exp", required=True)
    else:
        p.add_argument("out", help="hidden_units.sh's OUT_DIR")
    return p


def run_action(action: str, argv: List[str]) -> int:
    """``meta`` (write a run's meta.json), ``tokenizer`` (print stage 3's scores), ``hidden-units`` (print
    what hidden_units.sh made): the recipe's small reads and writes, so that its shell holds none."""
    args = _action_parser(action).parse_args(argv)
    if action == "meta":
        write_meta(args.exp, args.run, args.name, args.seed, args.order, args.pretrain_updates, args.time_from)
    elif action == "tokenizer":
        print("\n".join("  " + line for line in format_tokenizer(tokenizer_scores(args.exp))))
    else:
        print("\n".join(hidden_units_summary(args.out)))
    return 0


ACTIONS = ("meta", "tokenizer", "hidden-units")


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ACTIONS:
        return run_action(argv[0], argv[1:])
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--exp", required=True, help="the recipe's output directory (with runs/)")
    p.add_argument("--json", help="default: EXP/results.json")
    p.add_argument("--png", help="default: EXP/results.png")
    p.add_argument("--jobs", type=int, default=2, help="runs the recipe ran at a time (for the idle estimate)")
    args = p.parse_args(argv)
    runs = collect(args.exp)
    if not runs:
        sys.exit(f"{args.exp}/runs: no decoded run (run examples/mini/run.sh first)")
    rows = aggregate(runs)
    out_json = args.json or os.path.join(args.exp, "results.json")
    with open(out_json + ".tmp", "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    os.replace(out_json + ".tmp", out_json)
    png = args.png or os.path.join(args.exp, "results.png")
    plot(runs, rows, png)
    print(format_table(rows, tokenizer_scores(args.exp)))
    t = timing(args.exp, args.jobs)
    if t is not None:
        with open(os.path.join(args.exp, "timing.json"), "w", encoding="utf-8") as f:
            json.dump(t, f, indent=1)
        print(f"stages {', '.join(t['stages'])}: wall {t['wall'] / 60:.1f} min, CPU {t['cpu'] / 60:.1f} min (all "
              f"processes); on an idle machine with {t['jobs']} cores about {t['idle_estimate'] / 60:.1f} min")
    print(f"results: {out_json}; figure: {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
