#!/usr/bin/env python
"""Real-time factor of batched vs one-at-a-time Viterbi CTC decoding (``speechlm infer``'s loop) on CPU.

    python scripts/bench_decode.py CORPUS [--subset test] [--threads 2] [--sizes tiny,base] [--reps 3]

For each model size it builds a ``speechlm_ctc`` model with that architecture (random weights:
speed does not depend on them) -- ``tiny`` is examples/mini/config/pretrain/speechlm_tiny.yaml,
``base`` the paper's Base (12 layers of 768-d, 94.7M-parameter encoder) -- and decodes every
utterance of ``CORPUS/{subset}.tsv`` batched as ``speechlm infer`` does
(``speechlm.decoding.ctc.plan_batches``: length-sorted, at most ``--max-samples`` samples per batch
padding included; a comma list compares budgets) and one at a time, ``--reps`` times interleaved so
that both see the same load, and optionally batched the old way (``--old-max-tokens``: fairseq's batch
iterator). RTF = decoding wall time / audio duration (lower is faster); CPU-RTF uses the process's CPU
time instead, which other jobs on a shared machine inflate less; CPU/one is the ratio to one-at-a-time
in the same run. Prints a table with the load average before and after.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TINY_YAML = REPO / "examples/mini/config/pretrain/speechlm_tiny.yaml"


def model_config(size: str) -> dict:
    from omegaconf import OmegaConf

    if size == "tiny":
        cfg = OmegaConf.to_container(OmegaConf.load(TINY_YAML).model)
        cfg.pop("_name", None)
        return cfg
    if size == "base":
        return {}  # SpeechLMConfig's defaults are the paper's Base
    raise SystemExit(f"--sizes: unknown size {size!r} (tiny, base)")


def build(size: str, corpus: str, workdir: str):
    from fairseq.data import Dictionary
    from omegaconf import OmegaConf

    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel
    from speechlm.models.speechlm_ctc import SpeechLMCtc, SpeechLMCtcConfig
    from speechlm.tasks.speechlm_pretraining import (
        SpeechLMPretrainingConfig,
        SpeechLMPretrainingTask,
    )

    task = SpeechLMPretrainingTask.setup_task(OmegaConf.structured(SpeechLMPretrainingConfig(
        data=corpus, fine_tuning=True, max_sample_size=None, min_sample_size=0, seed=1,
        train_subset="")))  # no split is the training split: no shuffling or cropping
    letters = task.target_dictionary
    cfg = OmegaConf.structured(SpeechLMConfig(**model_config(size)))
    pre = SpeechLMModel(cfg, 45, Dictionary().pad(), len(letters))
    path = os.path.join(workdir, f"{size}.pt")
    torch.save({
        "args": None, "model": pre.state_dict(), "extra_state": {},
        "cfg": {"model": {**OmegaConf.to_container(cfg, enum_to_str=True), "_name": "speechlm"}},
        "optimizer_history": [{"criterion_name": "x", "optimizer_name": "x",
                               "lr_scheduler_state": {}, "num_updates": 0}],
    }, path)
    model = SpeechLMCtc.build_model(OmegaConf.structured(SpeechLMCtcConfig(w2v_path=path)), task)
    n_params = sum(p.numel() for p in model.parameters())
    return model.eval(), task, n_params


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("corpus", help="corpus dir with {subset}.tsv, {subset}.ltr and dict.ltr.txt")
    p.add_argument("--subset", default="test")
    p.add_argument("--sizes", default="tiny,base")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--max-samples", default=None,
                   help="samples per batch, padding included; a comma list gives one batched row each "
                        "(default: speechlm infer's)")
    p.add_argument("--reps", type=int, default=3,
                   help="passes over the subset per mode, interleaved (batched, one at a time, ...); "
                        "the table gives the median")
    p.add_argument("--old-max-tokens", type=int, default=0,
                   help="also time the old fairseq-iterator batching with this max_tokens (0: skip)")
    args = p.parse_args(argv)

    import logging
    import statistics

    logging.disable(logging.WARNING)
    sys.path.insert(0, str(REPO))
    import speechlm  # noqa: F401
    from speechlm.cli.infer import DecodingConfig
    from speechlm.decoding.ctc import ViterbiDecoder, decode_dataset, emissions

    budgets = [int(x) for x in str(args.max_samples or DecodingConfig.max_samples).split(",")]
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            model, task, n_params = build(size, args.corpus, tmp)
            task.load_dataset(args.subset)
            ds = task.dataset(args.subset)
            tgt = task.target_dictionary
            dec = [ViterbiDecoder(tgt, tgt.bos())]
            decode_dataset(model, ds, dec, tgt, batch_size=2)  # warm-up
            modes = [(f"batched({b // 1000}k)", {"max_samples": b}) for b in budgets]
            modes.insert(1, ("one-at-a-time", {"batch_size": 1}))
            if args.old_max_tokens:
                modes.append((f"old({args.old_max_tokens // 1000}k)", None))
            times = {mode: [] for mode, _ in modes}
            hyps = {}
            for _ in range(args.reps):
                for mode, kw in modes:
                    t0, c0 = time.perf_counter(), time.process_time()
                    if kw is None:
                        n, audio_s = old_batching(model, task, ds, args.old_max_tokens, emissions)
                    else:
                        res, audio_s, _, _ = decode_dataset(model, ds, dec, tgt, **kw)
                        n, hyps[mode] = len(res[0]), {k: h for k, (h, _) in res[0].items()}
                    times[mode].append((time.perf_counter() - t0, time.process_time() - c0))
            single = statistics.median(c for _, c in times["one-at-a-time"])
            for mode, _ in modes:
                secs = statistics.median(w for w, _ in times[mode])
                cpu = statistics.median(c for _, c in times[mode])
                rows.append((size, n_params / 1e6, mode, n, audio_s, secs, secs / audio_s, cpu / audio_s,
                             cpu / single))
            for mode in hyps:
                if hyps[mode] != hyps["one-at-a-time"]:
                    print(f"WARNING: {size}: {mode} and one-at-a-time hypotheses differ", file=sys.stderr)
    print(f"Viterbi CTC decoding on CPU, {args.threads} thread(s), {args.corpus}/{args.subset}.tsv, "
          f"median of {args.reps} interleaved passes; load average {load0:.1f} -> {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores")
    print(f"{'model':<6}{'params(M)':>10}  {'mode':<16}{'utts':>5}{'audio(s)':>10}"
          f"{'wall(s)':>9}{'RTF':>8}{'CPU-RTF':>9}{'CPU/one':>9}")
    for size, m, mode, n, a, s, rtf, cpu_rtf, ratio in rows:
        print(f"{size:<6}{m:>10.2f}  {mode:<16}{n:>5}{a:>10.1f}{s:>9.2f}{rtf:>8.4f}{cpu_rtf:>9.4f}{ratio:>9.3f}")
    print("RTF = wall time / audio; CPU-RTF = this process's CPU time / audio (all threads; "
          "less affected by other load on the machine); CPU/one = CPU time / one-at-a-time's")


def old_batching(model, task, ds, max_tokens, emissions):
    """The forward passes of the previous infer loop: fairseq's iterator, ``max_tokens`` samples."""
    from speechlm.data.manifest import SAMPLE_RATE

    itr = task.get_batch_iterator(
        dataset=ds, max_tokens=max_tokens, max_sentences=None, max_positions=None,
        ignore_invalid_inputs=False, required_batch_size_multiple=1, num_workers=0,
        disable_iterator_cache=True,
    ).next_epoch_itr(shuffle=False)
    n = 0
    with torch.inference_mode():
        for sample in itr:
            lprobs, lengths = emissions(model, sample)
            n += len(sample["id"])
    return n, sum(ds.size(i) for i in range(len(ds))) / SAMPLE_RATE


if __name__ == "__main__":
    main()
