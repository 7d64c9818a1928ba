"""The L_seq target: a fixed affine map of the language module's sentence vector t1.

Fitted once on the alignment transcripts' t1 vectors (N, H): ``center`` subtracts their mean (the part
every sentence shares is no target: regressing onto it pulls every s1 to one point); ``whiten`` = k > 0
keeps the top k principal directions of the centred vectors, each scaled to unit variance, and maps back
into the H-d space (t1 - mu) V_k diag(1 / sigma_k) V_k^T, so cosines equal those of the k whitened
coordinates and the target keeps the language module's width.
"""
from typing import Optional

import torch


class SentenceTarget:
    """``SentenceTarget.fit(t1, center, whiten)``; ``target(t1)`` (B, H) -> (B, H)."""

    def __init__(self, mean: Optional[torch.Tensor] = None, proj: Optional[torch.Tensor] = None):
        self.mean, self.proj = mean, proj

    @classmethod
    def fit(cls, t1: torch.Tensor, center: bool = False, whiten: int = 0) -> "SentenceTarget":
        if whiten < 0:
            raise ValueError(f"whiten={whiten}: give the number of principal directions kept (0 = none)")
        if not center and not whiten:
            return cls()
        t1 = t1.double()
        mean = t1.mean(0)
        if not whiten:
            return cls(mean.float())
        if whiten >= len(t1):
            raise ValueError(f"whiten={whiten} principal directions from {len(t1)} transcripts: keep fewer "
                             f"than the number of alignment transcripts")
        _, s, vt = torch.linalg.svd(t1 - mean, full_matrices=False)
        sd = s[:whiten] / (len(t1) - 1) ** 0.5
        v = vt[:whiten]
        return cls(mean.float(), (v.T / sd) @ v)

    def __call__(self, t1: torch.Tensor) -> torch.Tensor:
        if self.mean is not None:
            t1 = t1 - self.mean.to(t1)
        if self.proj is not None:
            t1 = t1 @ self.proj.to(t1)
        return t1
