#!/usr/bin/env python
"""L_seq alignment in a plain loop, with the geometry of s1 on valid every quarter of the run.

    PYTHONPATH=. python examples/splat/diagnostics/align_probe.py SPEECH_CKPT CORPUS \
        [--split train] [--target mean] [--center] [--whiten K] [--loss l1|nce|rel] [--speech first] \
        [--lr 1e-3] [--updates 180] [--train-geometry N]

SPEECH_CKPT is a pre-trained speech module (``splat_pretraining``); the language module is frozen.
Per report: the batch's L1 loss, S_avg / S_closest / gap of s1 on valid (neighbours by the uncentred
t1), the gradient norm before clipping (clip 5, as the align configs) and the mean L1 norms of the
predictions and targets (shrinking predictions = regression to the shared vector). ``--speech mean``
uses the mean of the speech outputs instead of s1; ``--target cls`` the [CLS] output; ``--whiten K`` the
top-K PCA-whitened centred t1 (``task.text_whiten``); ``--loss nce`` the criterion's contrastive L_seq,
``rel`` the MSE between the batch's cosine matrices of s1 and of the targets (relational).
"""
import argparse
import random
import time

import torch
import torch.nn.functional as F
from fairseq import tasks
from omegaconf import OmegaConf

import speechlm  # noqa: F401  (registers the task)
from speechlm.criterions.splat_alignment import contrastive_alignment_loss, sequence_alignment_loss
from speechlm.models.splat_speech import SplatSpeechConfig
from speechlm.splat.bert import pool_sentence
from speechlm.splat.geometry import geometry_scores
from speechlm.tasks.splat_alignment import SplatAlignmentConfig


def probe_loss(kind, s, t, tau):
    if kind == "l1":
        return sequence_alignment_loss(s, t).mean()
    if kind == "nce":
        return contrastive_alignment_loss(s, t, tau).mean()
    sn, tn = F.normalize(s, dim=-1), F.normalize(t, dim=-1)
    return ((sn @ sn.T - tn @ tn.T) ** 2).mean()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("ckpt")
    p.add_argument("corpus")
    p.add_argument("--bert", default="packaged:all-minilm-l6-v2")
    p.add_argument("--split", default="train", help="paired split to align on")
    p.add_argument("--target", default="mean", choices=("cls", "mean"))
    p.add_argument("--center", action="store_true", help="subtract the mean t1 of --split")
    p.add_argument("--whiten", type=int, default=0, help="target: top-k PCA-whitened centred t1 (task.text_whiten)")
    p.add_argument("--loss", default="l1", choices=("l1", "nce", "rel"),
                   help="l1: L_seq; nce: in-batch contrastive (s1_i must pick its own target among the batch's, "
                        "cosine / --tau); rel: MSE between the batch's cosine matrices of s1 and of the targets")
    p.add_argument("--train-geometry", type=int, default=0,
                   help="also the geometry of the first N utterances of --split (fit vs generalisation)")
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--speech", default="first", choices=("first", "mean"))
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--updates", type=int, default=180)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    task = tasks.setup_task(OmegaConf.structured(SplatAlignmentConfig(
        _name="splat_alignment", data=args.corpus, bert_path=args.bert, idf_split=args.split,
        text_pooling=args.target, center_text=args.center, text_whiten=args.whiten, seed=args.seed)))
    enc = task.build_model(OmegaConf.structured(SplatSpeechConfig(_name="splat_speech", init_from=args.ckpt))).encoder
    pad = task.tokenizer.pad_token_id

    def batches(split, size, shuffle):
        task.load_dataset(split)
        ds = task.dataset(split)
        idx = list(range(len(ds)))
        if shuffle:
            rng.shuffle(idx)
        for b in range(0, len(idx), size):
            yield ds.collater([ds[i] for i in idx[b: b + size]])

    def speech_vec(batch):
        out = enc(batch["net_input"]["source"], batch["net_input"]["padding_mask"])
        s = enc.to_text_space(out["encoder_out"])
        if args.speech == "first":
            return s[:, 0]
        keep = (~out["padding_mask"]).unsqueeze(-1).float()
        return (s * keep).sum(1) / keep.sum(1)

    @torch.no_grad()
    def geometry():
        enc.eval()
        text = []
        for split in ["valid"] + ([args.split] if args.train_geometry else []):
            S, T = [], []
            for k, b in enumerate(batches(split, 16, False)):
                if k * 16 >= args.train_geometry and split != "valid":
                    break
                S.append(speech_vec(b))
                tokens = b["text_tokens"]
                T.append(pool_sentence(task.text_representations(tokens), tokens.ne(pad), args.target))
            g = geometry_scores(torch.cat(S), torch.cat(T))
            text.append(f"{'' if split == 'valid' else split + ' '}S_avg {g['S_avg']:.3f} "
                        f"S_closest {g['S_closest']:.3f} gap {g['S_closest'] - g['S_avg']:+.3f}")
        enc.train()
        return " | ".join(text)

    t0 = time.process_time()
    print(f"step 0: {geometry()}", flush=True)
    opt = torch.optim.Adam(enc.parameters(), lr=args.lr)
    step = 0
    enc.train()
    while step < args.updates:
        for b in batches(args.split, args.batch, True):
            tokens = b["text_tokens"]
            s, t = speech_vec(b), task.sentence_vectors(tokens, task.text_representations(tokens))
            loss = probe_loss(args.loss, s, t, args.tau)
            opt.zero_grad()
            loss.backward()
            gnorm = torch.nn.utils.clip_grad_norm_(enc.parameters(), 5.0).item()
            opt.step()
            step += 1
            if step % max(1, args.updates // 4) == 0 or step == args.updates:
                print(f"step {step}: loss {loss.item():.1f} {geometry()} gnorm {gnorm:.1f} "
                      f"|s1|_1 {s.abs().sum(-1).mean().item():.1f} |t1|_1 {t.abs().sum(-1).mean().item():.1f} "
                      f"cpu {time.process_time() - t0:.0f}s", flush=True)
            if step >= args.updates:
                break


if __name__ == "__main__":
    main()
