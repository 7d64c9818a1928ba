#!/usr/bin/env python
"""Train SpeechLM's text branch alone and print its letter error on the valid text.

The text branch is what the UCTC loss trains: upsampled phoneme units -> unit embedding (masked) ->
Shared Transformer -> UCTC head -> letters. Trained alone, on the binarized unpaired text of the mini
recipe (``EXP/text_bin``), with the model sizes of a pre-training config, it tells what the branch can
learn in a number of updates, to compare with the text letter error of a joint pre-training run:

    python scripts/text_branch_probe.py --text exp/mini/text_bin --frames 2000 --updates 1200 [--mask 0.4]

Adam at the config's learning rate (linear warm-up, then constant), gradient clipping at 10, one
batch of at most ``--frames`` unit frames (padding included) per update, sentences in a seeded random
order. Prints the training CTC loss (nats per letter) and the valid letter error every ``--log-every``
updates (default 100) and at the last one.
"""
import argparse
import os
import sys
import time

import editdistance
import numpy as np
import torch
import yaml
from fairseq.data import Dictionary
from omegaconf import OmegaConf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batches(ds, order, frames):
    """Collated batches of ``ds`` in ``order``, each at most ``frames`` padded unit frames."""
    batch, longest = [], 0
    for i in order:
        n = int(ds.sizes[i])
        if batch and (len(batch) + 1) * max(longest, n) > frames:
            yield ds.collater([ds[j] for j in batch])
            batch, longest = [], 0
        batch.append(i)
        longest = max(longest, n)
    if batch:
        yield ds.collater([ds[j] for j in batch])


def main(argv=None):
    import speechlm  # noqa: F401  (registers the model)
    from speechlm.criterions.speechlm import uctc_loss
    from speechlm.data.unit_text_dataset import load_text_dataset
    from speechlm.decoding.ctc import greedy_ctc
    from speechlm.models.speechlm import SpeechLMConfig, SpeechLMModel

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--text", required=True, help="binarized text dir ({train,valid}.phn-ltr.*, dict.{phn,ltr}.txt)")
    p.add_argument("--config", default=os.path.join(REPO, "examples/mini/config/pretrain/speechlm_tiny.yaml"),
                   help="pre-training config whose model section and learning rate to use")
    p.add_argument("--frames", type=int, default=2000, help="unit frames per batch (default: 2000)")
    p.add_argument("--updates", type=int, default=1200)
    p.add_argument("--mask", type=float, default=None,
                   help="text masking probability (default: the config's text_mask_prob, else its mask_prob)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with open(args.config, encoding="utf-8") as f:
        conf = yaml.safe_load(f)
    model_conf = {k: v for k, v in conf["model"].items() if k != "_name"}
    if args.mask is not None:
        model_conf["text_mask_prob"] = args.mask
    cfg = OmegaConf.merge(OmegaConf.structured(SpeechLMConfig), model_conf)
    units = Dictionary.load(os.path.join(args.text, "dict.phn.txt"))
    letters = Dictionary.load(os.path.join(args.text, "dict.ltr.txt"))
    model = SpeechLMModel(cfg, len(units), units.pad(), len(letters))
    train = load_text_dataset(args.text, "train", "phn", units, letters)
    valid = load_text_dataset(args.text, "valid", "phn", units, letters)
    lr = float(conf["optimization"]["lr"][0])
    warmup = int(conf.get("lr_scheduler", {}).get("warmup_updates", 0))
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6)
    blank = letters.bos()

    def letter_error() -> float:
        model.eval()
        err = tot = 0
        with torch.no_grad():
            for s in batches(valid, range(len(valid)), 4000):
                o = model.forward_text(**s["net_input"], mask=False)
                for b, hyp in enumerate(greedy_ctc(o["uctc_logits"], o["uctc_lengths"], blank)):
                    ref = s["target"][b, : int(s["target_lengths"][b])].tolist()
                    err += editdistance.eval(hyp, ref)
                    tot += len(ref)
        model.train()
        return 100.0 * err / max(tot, 1)

    rng = np.random.RandomState(args.seed)
    stream = batches(train, rng.permutation(len(train)), args.frames)
    t0, sentences = time.process_time(), 0
    branch = [model.unit_embed, model.shared_encoder, model.uctc_head]
    print(f"text branch of {args.config} (unit embedding, Shared Transformer, UCTC head): "
          f"{sum(p.numel() for m in branch for p in m.parameters())} parameters "
          f"(of {sum(p.numel() for p in model.parameters())} in the model); "
          f"text mask p={cfg.mask_prob if cfg.text_mask_prob is None else cfg.text_mask_prob}")
    for update in range(1, args.updates + 1):
        try:
            s = next(stream)
        except StopIteration:
            stream = batches(train, rng.permutation(len(train)), args.frames)
            s = next(stream)
        sentences += s["nsentences"]
        for g in opt.param_groups:
            g["lr"] = lr * min(1.0, update / max(warmup, 1))
        o = model.forward_text(**s["net_input"])
        n = int(s["target_lengths"].sum())
        loss = uctc_loss(o["uctc_logits"], o["uctc_lengths"], s["target"], s["target_lengths"], blank) / n
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        opt.step()
        opt.zero_grad()
        if update % args.log_every == 0 or update == args.updates:
            print(f"update {update} sentences {sentences} train_ctc {loss.item():.3f} "
                  f"valid_letter_error {letter_error():.1f} % cpu {time.process_time() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
