"""SPLAT's input masking for reconstruction pre-training (Chung et al., 2021, after Mockingjay).

Each frame is chosen as a mask start with probability ``frame_prob`` and is masked together with its
next ``span - 1`` frames; each channel is masked with probability ``channel_prob`` for the whole
utterance. Masked entries become zero (the features are speaker-normalised, so zero is the mean).
"""
from typing import Optional, Tuple

import torch


def splat_mask(
    x: torch.Tensor,
    padding_mask: Optional[torch.Tensor] = None,
    frame_prob: float = 0.15,
    span: int = 4,
    channel_prob: float = 0.15,
    generator: Optional[torch.Generator] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask frames and channels of ``x`` (B, T, C).

    Returns ``(masked_x, frame_mask (B, T) bool, channel_mask (B, C) bool)``; the entries set to zero
    are ``frame_mask[:, :, None] | channel_mask[:, None, :]`` (padding frames are never marked).
    """
    B, T, C = x.shape
    starts = torch.rand(B, T, generator=generator, device="cpu") < frame_prob
    # frame t is masked if a span starts at any of t-span+1 .. t: a max-pool over a causal window
    frame_mask = (
        torch.nn.functional.max_pool1d(
            torch.nn.functional.pad(starts.float()[:, None, :], (span - 1, 0)), span, stride=1
        )[:, 0]
        > 0
    ).to(x.device)
    channel_mask = (torch.rand(B, C, generator=generator, device="cpu") < channel_prob).to(x.device)
    if padding_mask is not None:
        frame_mask &= ~padding_mask
    zero = frame_mask[:, :, None] | channel_mask[:, None, :]
    return x.masked_fill(zero, 0.0), frame_mask, channel_mask
