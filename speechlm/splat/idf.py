"""BERTScore's inverse document frequency over the paired transcripts (Zhang et al., 2020).

idf(w) = log((N + 1) / (df(w) + 1)), N the number of transcripts and df(w) the number of transcripts
that contain WordPiece w; [CLS] and [SEP] (and padding) weigh 0.
"""
from typing import Iterable, Sequence

import torch


def compute_idf(token_ids: Sequence[Sequence[int]], vocab_size: int, zero_ids: Iterable[int]) -> torch.Tensor:
    """(vocab_size,) float idf weights from tokenized transcripts; ``zero_ids`` get weight 0."""
    N = len(token_ids)
    df = torch.zeros(vocab_size, dtype=torch.float64)
    for ids in token_ids:
        df[torch.tensor(sorted(set(ids)), dtype=torch.long)] += 1
    idf = torch.log((N + 1) / (df + 1))
    for i in zero_ids:
        if i is not None:
            idf[i] = 0.0
    return idf.float()
