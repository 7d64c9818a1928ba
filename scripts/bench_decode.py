#!/usr/bin/env python
"""Real-time factor of batched Viterbi CTC decoding (``speechlm infer``'s loop) on CPU.

    python scripts/bench_decode.py CORPUS [--subset test] [--threads 2] [--sizes tiny,base]

For each model size it builds a ``speechlm_ctc`` model with that architecture (random weights:
speed does not depend on them) -- ``tiny`` is examples/mini/config/pretrain/speechlm_tiny.yaml,
``base`` the paper's Base (12 layers of 768-d, 94.7M-parameter encoder) -- and decodes every
utterance of ``CORPUS/{subset}.tsv`` batched (padded, by length) and one at a time. RTF = decoding
wall time / audio duration (lower is faster); CPU-RTF uses the process's CPU time instead, which
other jobs on a shared machine do not inflate. Prints a table.
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
        data=corpus, fine_tuning=True, max_sample_size=None, min_sample_size=0, seed=1)))
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
    p.add_argument("--max-tokens", type=int, default=1_600_000, help="samples per batch")
    args = p.parse_args(argv)

    import logging

    logging.disable(logging.WARNING)
    sys.path.insert(0, str(REPO))
    import speechlm  # noqa: F401
    from speechlm.cli.infer import ViterbiDecoder, decode_dataset

    torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            model, task, n_params = build(size, args.corpus, tmp)
            task.load_dataset(args.subset)
            ds = task.dataset(args.subset)
            tgt = task.target_dictionary
            dec = ViterbiDecoder(tgt, tgt.bos())
            decode_dataset(model, task, ds, dec, "letter", batch_size=2)  # warm-up
            for mode, kw in (("batched", {"max_tokens": args.max_tokens}),
                             ("one-at-a-time", {"batch_size": 1})):
                t0, c0 = time.perf_counter(), time.process_time()
                res, audio_s, _ = decode_dataset(model, task, ds, dec, "letter", **kw)
                secs, cpu = time.perf_counter() - t0, time.process_time() - c0
                rows.append((size, n_params / 1e6, mode, len(res), audio_s, secs, secs / audio_s,
                             cpu / audio_s))
    print(f"batched Viterbi CTC decoding on CPU, {args.threads} thread(s), "
          f"{args.corpus}/{args.subset}.tsv")
    print(f"{'model':<6}{'params(M)':>10}  {'mode':<14}{'utts':>5}{'audio(s)':>10}"
          f"{'wall(s)':>9}{'RTF':>8}{'CPU-RTF':>9}")
    for size, m, mode, n, a, s, rtf, cpu_rtf in rows:
        print(f"{size:<6}{m:>10.2f}  {mode:<14}{n:>5}{a:>10.1f}{s:>9.2f}{rtf:>8.4f}{cpu_rtf:>9.4f}")
    print("RTF = wall time / audio; CPU-RTF = this process's CPU time / audio (all threads; "
          "unaffected by other load on the machine)")


if __name__ == "__main__":
    main()
