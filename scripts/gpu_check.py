"""The GPU check behind scripts/gpu_check.sh: SpeechLM Base in fp16 against fairseq's HuBERT Base on the same batch.

    python scripts/gpu_check.py --out gpu_check.json [--updates 300] [--cpu-smoke]

1. Pre-training steps of SpeechLM-P Base (conv front end, 6 + 6 layers of 768, relative keys, UMLM + UCTC with
   the ``speechlm`` criterion) through fairseq's ``FP16Optimizer`` (fp32 master weights, dynamic loss scale; the
   optimizer ``common.fp16=true`` gives the trainer): every loss finite, overflow-skipped steps counted, the step
   time (median after warm-up) and the peak memory.
2. fairseq's own HuBERT Base (``HubertModel`` + ``HubertCriterion``) the same way on the same speech batch: the
   step-time ratio of the two.
3. CTC decoding speed: the Base encoder + UCTC head in fp16 (no gradient) and greedy CTC over the batch: the
   real-time factor.

The batch is random (white-noise waveforms, random units and letters, seeded): the check measures numerics and
speed, not learning. ``--cpu-smoke``: tiny sizes and bf16 on the CPU through the same code (no timing claims).
Writes one JSON (atomically) and prints it.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import speechlm  # noqa: E402,F401  (registers the components)
from speechlm.data.manifest import SAMPLE_RATE, num_frames_50hz  # noqa: E402

NUM_UNITS = 364 + 4  # Kaldi position-dependent phones + fairseq's specials (the published phone units)
NUM_LETTERS = 32
BASE = {}  # SpeechLMConfig's defaults are the published Base
TINY = dict(conv_feature_layers="[(32,10,5)] + [(32,3,2)] * 4 + [(32,2,2)] * 2", encoder_embed_dim=64,
            encoder_ffn_embed_dim=128, encoder_attention_heads=4, speech_encoder_layers=1, shared_encoder_layers=1,
            conv_pos=16, conv_pos_groups=4, final_dim=32)


def optimizer_cfg(half: str, lr: float = 5e-4):
    """The fairseq config the trainer would build for ``common.fp16`` / ``common.bf16`` and Adam."""
    from fairseq.dataclass.configs import FairseqConfig
    from fairseq.optim.adam import FairseqAdamConfig

    cfg = OmegaConf.create(OmegaConf.to_container(OmegaConf.structured(FairseqConfig)))
    cfg.common.fp16, cfg.common.bf16 = half == "fp16", half == "bf16"
    cfg.optimization.lr = [lr]
    cfg.optimizer = OmegaConf.create({**OmegaConf.to_container(OmegaConf.structured(
        FairseqAdamConfig(adam_betas="(0.9,0.98)", adam_eps=1e-6, weight_decay=0.01))), "_name": "adam", "lr": [lr]})
    return cfg


def train_steps(model, loss_fn, n: int, warmup: int, half: str, device):
    """``n`` fp16/bf16 updates with fairseq's FP16Optimizer -> losses, overflow count, step times (s)."""
    from fairseq.optim.fp16_optimizer import FP16Optimizer

    params = [p for p in model.parameters() if p.requires_grad]
    opt = FP16Optimizer.build_optimizer(optimizer_cfg(half), params)
    losses, times, overflows = [], [], 0
    for i in range(n):
        sync(device)
        t0 = time.perf_counter()
        opt.zero_grad()
        loss, sample_size = loss_fn(model)
        opt.backward(loss)
        opt.multiply_grads(1.0 / max(sample_size, 1))
        try:
            opt.clip_grad_norm(10.0)
            opt.step()
        except OverflowError:  # the trainer's behaviour: the loss scale was lowered, the update skipped
            overflows += 1
        sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        losses.append(float(loss.detach()) / max(sample_size, 1))
    return losses, overflows, times


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def speech_batch(batch: int, seconds: float, device, dtype, gen):
    S = int(seconds * SAMPLE_RATE)
    T = num_frames_50hz(S)
    source = (torch.randn(batch, S, generator=gen) * 0.1).to(device, dtype)
    units = torch.randint(4, NUM_UNITS, (batch, T), generator=gen).to(device)
    return source, units


def run(args):
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    half = "bf16" if args.cpu_smoke else "fp16"
    dtype = torch.bfloat16 if half == "bf16" else torch.float16
    sizes = TINY if args.cpu_smoke else BASE
    gen = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    from fairseq.data import Dictionary

    from speechlm.criterions.speechlm import SpeechLMCriterion, SpeechLMCriterionConfig
    from speechlm.decoding.ctc import greedy_ctc
    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    letters = Dictionary()
    for i in range(NUM_LETTERS - len(letters)):
        letters.add_symbol(chr(ord("A") + i))

    class Task:  # what the criterion reads from its task
        letter_dictionary = letters

    source, units = speech_batch(args.batch, args.seconds, device, dtype, gen)
    B, T = units.shape
    text_units = torch.randint(4, NUM_UNITS, (args.batch, T), generator=gen).to(device)
    text_letters = torch.randint(4, len(letters), (args.batch, T // 5), generator=gen).to(device)
    sample = {
        "speech": {"net_input": {"source": source, "padding_mask": None}, "target": units,
                   "ntokens": units.numel(), "nsentences": B},
        "text": {"net_input": {"units": text_units, "padding_mask": None}, "target": text_letters,
                 "target_lengths": torch.full((B,), text_letters.size(1), device=device), "nsentences": B},
    }
    cfg = OmegaConf.structured(SpeechLMConfig(**sizes, encoder_layerdrop=0.0))
    model = SpeechLMModel(cfg, NUM_UNITS, 1, len(letters)).to(device, dtype).train()
    criterion = SpeechLMCriterion(SpeechLMCriterionConfig(), Task())
    n_params = sum(p.numel() for p in model.parameters())

    def speechlm_loss(m):
        loss, sample_size, _ = criterion(m, sample)
        return loss, sample_size

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    losses, overflows, times = train_steps(model, speechlm_loss, args.updates, args.warmup, half, device)
    peak_train = torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None
    result = {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu (smoke run: bf16, tiny sizes)",
        "precision": half, "batch": {"utterances": B, "seconds_each": args.seconds, "frames_each": T},
        "speechlm": {"parameters": n_params, "updates": args.updates, "first_loss": losses[0],
                     "last_loss": losses[-1], "all_finite": all(map(lambda v: v == v and abs(v) != float("inf"),
                                                                    losses)),
                     "overflow_skipped_updates": overflows, "step_s_median": statistics.median(times),
                     "peak_memory_gib": peak_train},
    }
    del model

    # fairseq's HuBERT Base on the same speech batch
    from fairseq.criterions.hubert_criterion import HubertCriterion
    from fairseq.models.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig

    units_dict = Dictionary()
    for i in range(NUM_UNITS - len(units_dict)):
        units_dict.add_symbol(str(i))
    hcfg = HubertConfig(label_rate=50, encoder_layerdrop=0.0)
    if args.cpu_smoke:
        for k in ("conv_feature_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                  "conv_pos", "conv_pos_groups", "final_dim"):
            setattr(hcfg, k, TINY[k])
        hcfg.encoder_layers = 2
    hubert = HubertModel(hcfg, HubertPretrainingConfig(label_rate=50, sample_rate=SAMPLE_RATE), [units_dict])
    hubert = hubert.to(device, dtype).train()
    hcrit = HubertCriterion(None, pred_masked_weight=1.0, pred_nomask_weight=0.0, loss_weights=[10.0])
    no_padding = torch.zeros(source.shape, dtype=torch.bool, device=device)  # fairseq's HuBERT needs a mask
    hsample = {"net_input": {"source": source, "padding_mask": no_padding}, "target_list": [units],
               "id": torch.arange(B), "ntokens": units.numel()}

    def hubert_loss(m):
        loss, sample_size, _ = hcrit(m, hsample)
        return loss, sample_size

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n_h = min(args.updates, args.hubert_updates)
    h_losses, h_over, h_times = train_steps(hubert, hubert_loss, n_h, min(args.warmup, n_h - 1), half, device)
    result["hubert_base"] = {
        "parameters": sum(p.numel() for p in hubert.parameters()), "updates": n_h, "last_loss": h_losses[-1],
        "overflow_skipped_updates": h_over, "step_s_median": statistics.median(h_times),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else None,
    }
    result["step_time_ratio_speechlm_over_hubert"] = (result["speechlm"]["step_s_median"]
                                                      / result["hubert_base"]["step_s_median"])
    del hubert

    # CTC decoding speed: encoder + UCTC head in half precision, greedy CTC
    model = SpeechLMModel(cfg, NUM_UNITS, 1, len(letters)).to(device, dtype).eval()
    times = []
    with torch.no_grad():
        for i in range(args.decode_repeats + 1):
            sync(device)
            t0 = time.perf_counter()
            h, _ = model.extract_features(source, None)
            lprobs = F.log_softmax(model.uctc_head(h).float(), dim=-1)
            hyps = greedy_ctc(lprobs, torch.full((B,), h.size(1)), blank=letters.bos())
            sync(device)
            if i > 0:
                times.append(time.perf_counter() - t0)
    audio_s = B * args.seconds
    result["ctc_decoding"] = {"audio_s": audio_s, "s_median": statistics.median(times),
                              "real_time_factor": statistics.median(times) / audio_s,
                              "finite": bool(torch.isfinite(lprobs).all()), "utterances": len(hyps)}
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON to write")
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, bf16 on the CPU (checks the code path)")
    p.add_argument("--updates", type=int, default=300, help="SpeechLM fp16 updates")
    p.add_argument("--hubert-updates", type=int, default=100, help="HuBERT updates (timing only)")
    p.add_argument("--warmup", type=int, default=10, help="updates left out of the step time")
    p.add_argument("--batch", type=int, default=8, help="utterances per batch")
    p.add_argument("--seconds", type=float, default=15.6, help="seconds per utterance (8 x 15.6 s = 2 M samples)")
    p.add_argument("--decode-repeats", type=int, default=5)
    args = p.parse_args(argv)
    if not args.cpu_smoke and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device (torch.cuda.is_available() is False); --cpu-smoke checks the code path")
    if args.updates < 1 or args.warmup >= args.updates:
        sys.exit("gpu_check: need --updates >= 1 and --warmup < --updates")
    result = run(args)
    tmp = args.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(result, f, indent=2)
    os.replace(tmp, args.out)
    print(json.dumps(result, indent=2))
    ok = result["speechlm"]["all_finite"] and result["ctc_decoding"]["finite"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
