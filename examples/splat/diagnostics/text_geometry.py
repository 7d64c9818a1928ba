#!/usr/bin/env python
"""Geometry of the language module's own sentence vectors t1 on a corpus's valid and train transcripts.

    PYTHONPATH=. python examples/splat/diagnostics/text_geometry.py CORPUS [--bert packaged:all-minilm-l6-v2]

For [CLS], mean pooling and both centred: S_avg, S_closest (nearest neighbour in the same space), their
gap (what an s1 that copied t1 exactly would show), the mean L2 / L1 norms and the share of the mean
vector in the norm (how much of t1 every sentence shares).
"""
import argparse

import torch
import torch.nn.functional as F

from speechlm.data.splat_text import read_transcripts
from speechlm.splat.bert import BertBundle, pool_sentence


def stats(v, name):
    n = F.normalize(v, dim=-1)
    c = n @ n.T
    off = ~torch.eye(len(v), dtype=torch.bool)
    s_avg = c[off].mean()
    s_closest = c.masked_fill(~off, -9).max(1).values.mean()
    print(f"{name:<26} S_avg {s_avg:6.3f}  S_closest {s_closest:6.3f}  gap {s_closest - s_avg:+.3f}  "
          f"|t1|_2 {v.norm(dim=-1).mean():5.2f}  |t1|_1 {v.abs().sum(-1).mean():6.1f}  "
          f"|mean t1| / |t1| {v.mean(0).norm() / v.norm(dim=-1).mean():.3f}")


@torch.no_grad()
def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("corpus")
    p.add_argument("--bert", default="packaged:all-minilm-l6-v2")
    p.add_argument("--splits", nargs="+", default=["valid", "train"])
    args = p.parse_args()
    bundle = BertBundle(args.bert)
    tok, lm = bundle.get_tokenizer(), bundle.get_model()
    for split in args.splits:
        enc = tok(read_transcripts(args.corpus, split), padding=True, truncation=True, max_length=128,
                  return_tensors="pt")
        hidden = lm(**enc).last_hidden_state
        mask = enc["attention_mask"].bool()
        cls, mean = pool_sentence(hidden, mask, "cls"), pool_sentence(hidden, mask, "mean")
        print(f"--- {split} ({len(cls)} transcripts)")
        stats(cls, "[CLS]")
        stats(mean, "mean pooling")
        stats(cls - cls.mean(0), "[CLS], centred")
        stats(mean - mean.mean(0), "mean pooling, centred")


if __name__ == "__main__":
    main()
