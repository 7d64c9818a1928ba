#!/usr/bin/env python
"""Training throughput of the SPLAT speech module against fairseq's own Transformer encoders.

    python scripts/bench_splat.py [--data CORPUS] [--batch 16] [--steps 6] [--sizes mini paper-width]

Every model gets the SAME batch of 80-d log-Mel utterances (the first ``--batch`` rows of ``valid`` of a
corpus with ``speechlm splat features``, or synthetic frames of the mini corpus's lengths without
``--data``), the same L1 reconstruction objective on a linear head and Adam; a step is
forward + backward + optimizer step, one thread. Models, each at 25 Hz (4 frames per position) and
with the same layers / width / heads / feed-forward width:

- ``splat_speech``: this plugin's speech module (fairseq ``TransformerSentenceEncoderLayer``, post-LN);
- ``fairseq TransformerEncoderLayer``: fairseq's translation/S2T encoder layer (post-LN, GELU) behind the
  same stacked-frame projection and sinusoidal positions (the layer implementations compared alone);
- ``fairseq S2TTransformerEncoder``: fairseq's speech-to-text encoder as a user would build it (two
  stride-2 conv layers of width D instead of stacking, pre-LN, scaled embeddings).

Prints utterances/s (median over the timed steps, after ``--warmup``) and the ratio to ``splat_speech``.
"""
import argparse
import os
import statistics
import sys
import time
from argparse import Namespace

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = {  # layers, width, FFN, heads
    "mini": (3, 128, 512, 4),  # examples/splat/run_variants.py
    "paper-width": (3, 768, 3072, 12),  # the paper's speech module, here at 25 Hz
}
STRIDE = 4


def batch_from(data, n):
    from speechlm.data.fbank import SpeakerFeatures

    if data:
        feats = SpeakerFeatures(data, "valid")
        xs = [torch.from_numpy(feats[i]) for i in range(min(n, len(feats)))]
    else:  # lengths of mini-corpus sentences (2.5 .. 6 s), normalised-feature statistics
        g = torch.Generator().manual_seed(0)
        xs = [torch.randn(int(t), 80, generator=g) for t in np.linspace(250, 600, n)]
    T = max(len(x) for x in xs)
    T += (-T) % STRIDE
    src = torch.zeros(len(xs), T, 80)
    pad = torch.ones(len(xs), T, dtype=torch.bool)
    for i, x in enumerate(xs):
        src[i, : len(x)] = x
        pad[i, : len(x)] = False
    return src, pad


class Stacked(nn.Module):
    """Stacked frames -> linear -> sinusoidal positions -> fairseq TransformerEncoderLayer x L."""

    def __init__(self, layers, D, ffn, heads):
        super().__init__()
        from fairseq.modules import SinusoidalPositionalEmbedding, TransformerEncoderLayer

        self.proj = nn.Linear(80 * STRIDE, D)
        self.register_buffer("pos", SinusoidalPositionalEmbedding.get_embedding(4096, D), persistent=False)
        self.norm = nn.LayerNorm(D)
        args = Namespace(encoder_embed_dim=D, encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads,
                         dropout=0.1, attention_dropout=0.1, activation_dropout=0.0, activation_fn="gelu",
                         encoder_normalize_before=False)
        self.layers = nn.ModuleList(TransformerEncoderLayer(args) for _ in range(layers))
        self.head = nn.Linear(D, 80 * STRIDE)

    def forward(self, src, pad):
        B, T, C = src.shape
        x = self.proj(src.reshape(B, T // STRIDE, C * STRIDE))
        pm = pad[:, ::STRIDE]
        x = self.norm(x + self.pos[: x.shape[1]]).transpose(0, 1)
        for layer in self.layers:
            x = layer(x, encoder_padding_mask=pm)
        return self.head(x.transpose(0, 1)).reshape(B, T, C)


class S2T(nn.Module):
    def __init__(self, layers, D, ffn, heads):
        super().__init__()
        from fairseq.models.speech_to_text.s2t_transformer import S2TTransformerEncoder, base_architecture

        args = Namespace(input_feat_per_channel=80, encoder_layers=layers, encoder_embed_dim=D,
                         encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads, conv_channels=D,
                         conv_kernel_sizes="5,5", max_source_positions=4096, dropout=0.1,
                         activation_fn="gelu", activation_dropout=0.0)
        base_architecture(args)
        self.enc = S2TTransformerEncoder(args)
        self.head = nn.Linear(D, 80 * STRIDE)

    def forward(self, src, pad):
        B, T, C = src.shape
        x = self.enc(src, (~pad).sum(1))["encoder_out"][0].transpose(0, 1)  # (B, ~T/4, D)
        y = self.head(x).reshape(B, -1, C)[:, :T]
        return nn.functional.pad(y, (0, 0, 0, T - y.shape[1]))


class Splat(nn.Module):
    def __init__(self, layers, D, ffn, heads):
        super().__init__()
        from speechlm.models.splat_speech import SplatSpeechConfig, SplatSpeechEncoder

        self.enc = SplatSpeechEncoder(SplatSpeechConfig(
            encoder_layers=layers, encoder_embed_dim=D, encoder_ffn_embed_dim=ffn, encoder_attention_heads=heads,
            input_stride=STRIDE, max_positions=4096))

    def forward(self, src, pad):
        return self.enc.reconstruct(self.enc(src, pad)["encoder_out"], src.shape[1])


def bench(model, src, pad, steps, warmup):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    model.train()
    times = []
    for k in range(warmup + steps):
        t = time.process_time()
        y = model(src, pad)
        loss = (y - src).abs().masked_fill(pad[:, :, None], 0.0).sum() / (~pad).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if k >= warmup:
            times.append(time.process_time() - t)
    return src.shape[0] / statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", help="corpus with fbank features (its valid split); default synthetic frames")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    src, pad = batch_from(args.data, args.batch)
    frames = int((~pad).sum())
    print(f"batch: {src.shape[0]} utterances, {frames} frames (100 Hz), padded to {src.shape[1]}; "
          f"one thread; CPU time per step (process_time), median of {args.steps}")
    print(f"{'size':<12}{'model':<34}{'params':>10}{'utt/s':>9}{'ratio':>8}")
    for size in args.sizes:
        L, D, F, H = SIZES[size]
        base = None
        for name, cls in (("splat_speech", Splat), ("fairseq TransformerEncoderLayer", Stacked),
                          ("fairseq S2TTransformerEncoder", S2T)):
            torch.manual_seed(0)
            m = cls(L, D, F, H)
            n = sum(q.numel() for q in m.parameters())
            ups = bench(m, src, pad, args.steps, args.warmup)
            base = base or ups
            print(f"{size:<12}{name:<34}{n / 1e6:>9.2f}M{ups:>9.1f}{ups / base:>8.2f}")


if __name__ == "__main__":
    main()
