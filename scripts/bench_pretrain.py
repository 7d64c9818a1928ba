#!/usr/bin/env python
"""Time one SpeechLM pre-training step against fairseq's own HuBERT of the same size, in one run.

For each size (``tiny`` = examples/mini/config/pretrain/speechlm_tiny.yaml, ``base`` =
examples/librispeech/config/pretrain/speechlm_p_base_librispeech.yaml) this builds the ``speechlm``
model and ``fairseq.models.hubert.HubertModel`` with the same front end (the tiny config's log-Mel one is
put into HuBERT too), width, depth, heads,
masking and dropouts, and times forward + loss + backward + Adam step on the SAME speech batch:

- ``hubert``: HuBERT's step with fairseq's ``hubert`` criterion (masked prediction);
- ``speech``: SpeechLM's speech path (UMLM at both transformer outputs, random swapping);
- ``speech+text``: SpeechLM's full step, speech batch plus a text batch of max_tokens/320 unit frames.

It prints, for each, the median wall time and the median process CPU time of a step (CPU time is
what to compare on a shared machine: other users' load inflates wall time, not CPU time, at 1
thread), speech-seconds per wall second, SpeechLM-speech / HuBERT step time (goal: <= 1.05) and the
extra cost of the text batch. Audio: ``--corpus DIR`` takes utterances of DIR/valid.tsv (+ .phn);
without it the batch is white noise with random units (timing does not depend on the values).

    OMP_NUM_THREADS=2 python scripts/bench_pretrain.py --corpus exp/mini/corpus --sizes tiny base
"""
import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CONFIGS = {
    "tiny": REPO / "examples/mini/config/pretrain/speechlm_tiny.yaml",
    "base": REPO / "examples/librispeech/config/pretrain/speechlm_p_base_librispeech.yaml",
}
SHARED_KEYS = (  # SpeechLMConfig fields with the same meaning in HubertConfig
    "extractor_mode", "conv_feature_layers", "conv_bias", "encoder_embed_dim", "encoder_ffn_embed_dim",
    "encoder_attention_heads", "activation_fn", "layer_norm_first", "dropout", "attention_dropout",
    "activation_dropout", "encoder_layerdrop", "dropout_input", "feature_grad_mult",
    "conv_pos", "conv_pos_groups", "mask_prob", "mask_length", "mask_selection", "mask_other",
    "no_mask_overlap", "mask_min_space", "logit_temp",
)


def load_batch(args, num_units):
    """``(source (B,S), target (B,T))``: ``--batch`` utterances cropped to ``--seconds`` each."""
    from speechlm.data.manifest import SAMPLE_RATE, num_frames_50hz
    from speechlm.data.readers import load_labels, load_manifest, read_audio

    S = int(args.seconds * SAMPLE_RATE)
    T = num_frames_50hz(S)
    if not args.corpus:
        g = torch.Generator().manual_seed(0)
        return torch.randn(args.batch, S, generator=g) * 0.1, torch.randint(4, num_units, (args.batch, T), generator=g)
    from fairseq.data import Dictionary

    corpus = Path(args.corpus)
    root, rows = load_manifest(corpus / "valid.tsv")
    labels = load_labels(corpus / "valid.phn", len(rows), corpus / "valid.tsv")
    d = Dictionary.load(str(corpus / "dict.phn.txt"))
    wavs, tgts = [], []
    for (rel, n), lab in zip(rows, labels):
        if n < S:
            continue
        wavs.append(torch.from_numpy(read_audio(os.path.join(root, rel))[:S]))
        tgts.append(torch.tensor([d.index(t) for t in lab.split()[:T]]))
        if len(wavs) == args.batch:
            break
    if len(wavs) < args.batch:
        raise SystemExit(f"{corpus}/valid.tsv: fewer than {args.batch} utterances of {args.seconds}s; lower --seconds")
    return torch.stack(wavs), torch.stack(tgts)


def build(size, num_units, num_letters):
    from fairseq.data import Dictionary
    from fairseq.models.hubert.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    yaml_model = OmegaConf.load(CONFIGS[size])["model"]
    fields = {k: v for k, v in yaml_model.items() if k != "_name"}
    slm_cfg = OmegaConf.merge(OmegaConf.structured(SpeechLMConfig), fields)
    torch.manual_seed(0)
    slm = SpeechLMModel(slm_cfg, num_units, 1, num_letters)

    hub_cfg = OmegaConf.structured(HubertConfig(label_rate=50))
    for k in SHARED_KEYS:
        hub_cfg[k] = slm_cfg[k]
    hub_cfg.encoder_layers = slm_cfg.speech_encoder_layers + slm_cfg.shared_encoder_layers
    task_cfg = HubertPretrainingConfig(data="-", label_rate=50)
    d = Dictionary()
    for i in range(num_units - len(d)):
        d.add_symbol(f"u{i}")
    hub = HubertModel(hub_cfg, task_cfg, [d])
    if slm_cfg.frontend == "logmel":  # HuBERT gets the same log-Mel front end (its forward passes only the wav)
        from fairseq.modules import LayerNorm

        from speechlm.modules.logmel_frontend import LogMelFrontEnd

        D = slm_cfg.encoder_embed_dim
        hub.feature_extractor = LogMelFrontEnd(D)
        hub.layer_norm, hub.post_extract_proj, hub.embed = LayerNorm(D), None, D
    return slm, hub, d


class _Task:
    """What fairseq's hubert criterion reads from its task."""

    def __init__(self, d):
        self.target_dictionary = d
        self.dictionaries = [d]


def make_steps(slm, hub, d, source, target, text_units, text_letters):
    from fairseq.criterions.hubert_criterion import HubertCriterion

    from speechlm.criterions.speechlm import SpeechLMCriterion, SpeechLMCriterionConfig

    class _SLMTask:
        letter_dictionary = None

    hub_crit = HubertCriterion(_Task(d), pred_masked_weight=1.0, pred_nomask_weight=0.0)
    slm_crit = SpeechLMCriterion(SpeechLMCriterionConfig(), _SLMTask())
    slm_opt = torch.optim.Adam(slm.parameters(), lr=1e-5)
    hub_opt = torch.optim.Adam(hub.parameters(), lr=1e-5)
    no_padding = torch.zeros_like(source, dtype=torch.bool)  # HuBERT's forward needs a mask tensor
    speech = {"net_input": {"source": source, "padding_mask": no_padding}, "target": target,
              "ntokens": target.numel(), "nsentences": source.size(0)}
    text = {"net_input": {"units": text_units, "padding_mask": torch.zeros_like(text_units, dtype=torch.bool)},
            "target": text_letters, "target_lengths": torch.full((text_letters.size(0),), text_letters.size(1)),
            "nsentences": text_units.size(0)}

    hub_sample = {"id": torch.arange(source.size(0)), "net_input": {"source": source, "padding_mask": no_padding},
                  "target_list": [target]}

    def hubert_step():
        hub_opt.zero_grad()
        loss, _, _ = hub_crit(hub, hub_sample)
        loss.backward()
        hub_opt.step()

    def speech_step():
        slm_opt.zero_grad()
        loss, _, _ = slm_crit(slm, {"speech": speech, "text": None})
        loss.backward()
        slm_opt.step()

    def speech_text_step():
        slm_opt.zero_grad()
        loss, _, _ = slm_crit(slm, {"speech": speech, "text": text})
        loss.backward()
        slm_opt.step()

    return {"hubert": hubert_step, "speech": speech_step, "speech+text": speech_text_step}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"], choices=sorted(CONFIGS))
    p.add_argument("--corpus", help="mini corpus dir (valid.tsv, valid.phn, dict.phn.txt); default: noise")
    p.add_argument("--batch", type=int, default=4, help="utterances per speech batch")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance (all cropped to it)")
    p.add_argument("--reps", type=int, default=5, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    import speechlm  # noqa: F401
    from speechlm.data.manifest import SAMPLE_RATE
    from speechlm.data.speech_text_batches import default_text_max_tokens

    num_units, num_letters = 45, 32
    source, target = load_batch(args, num_units)
    speech_seconds = source.numel() / SAMPLE_RATE
    # text batch: the default budget, max_tokens / 320 unit frames, for this speech batch's size
    frames = default_text_max_tokens(source.numel())
    text_len = 200
    g = torch.Generator().manual_seed(1)
    text_units = torch.randint(4, num_units, (max(1, frames // text_len), text_len), generator=g)
    text_letters = torch.randint(4, num_letters, (text_units.size(0), text_len // 5), generator=g)

    print(f"speech batch: {source.size(0)} x {args.seconds:.1f} s = {speech_seconds:.1f} s; "
          f"text batch: {text_units.size(0)} x {text_len} unit frames; threads: {args.threads}; "
          f"device: cpu; torch {torch.__version__}")
    header = (f"{'size':<6} {'variant':<12} {'wall s':>9} {'cpu s':>9} {'speech-s/s':>11} {'wall vs hubert':>15} "
              f"{'cpu vs hubert':>14}")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        slm, hub, d = build(size, num_units, num_letters)
        slm.train(), hub.train()
        steps = make_steps(slm, hub, d, source, target, text_units, text_letters)
        times = {k: [] for k in steps}
        cpu = {k: [] for k in steps}
        for fn in steps.values():  # warm-up
            fn()
        for _ in range(args.reps):  # interleaved, so load changes hit every variant alike
            for k, fn in steps.items():
                t0, c0 = time.perf_counter(), time.process_time()
                fn()
                times[k].append(time.perf_counter() - t0)
                cpu[k].append(time.process_time() - c0)
        med = {k: statistics.median(v) for k, v in times.items()}
        cmed = {k: statistics.median(v) for k, v in cpu.items()}
        for k in steps:
            print(f"{size:<6} {k:<12} {med[k]:>9.3f} {cmed[k]:>9.3f} {speech_seconds / med[k]:>11.1f} "
                  f"{med[k] / med['hubert']:>15.3f} {cmed[k] / cmed['hubert']:>14.3f}")
        extra = cmed["speech+text"] / cmed["speech"] - 1
        n_slm = sum(q.numel() for q in slm.parameters()) / 1e6
        n_hub = sum(q.numel() for q in hub.parameters()) / 1e6
        print(f"{size:<6} speech path / HuBERT step: CPU time {cmed['speech'] / cmed['hubert']:.3f}, wall "
              f"{med['speech'] / med['hubert']:.3f} (goal <= 1.05); text batch adds {100 * extra:.1f}% CPU; "
              f"params SpeechLM {n_slm:.2f}M, HuBERT {n_hub:.2f}M")
    return 0


if __name__ == "__main__":
    sys.exit(main())
