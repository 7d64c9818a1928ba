"""Readers for the text side of SPLAT data: transcripts (alignment, MLM adaptation, geometry) and
spoken-QA answer spans. Each checks its file against the split's manifest and names the bad line.
"""
import math
import os
from typing import List

import numpy as np

from speechlm.data.readers import load_labels, load_manifest


def read_transcripts(data: str, split: str, ext: str = "wrd") -> List[str]:
    """The ``{data}/{split}.{ext}`` transcripts, one per row of ``{data}/{split}.tsv``."""
    tsv = os.path.join(data, f"{split}.tsv")
    _, rows = load_manifest(tsv)
    path = os.path.join(data, f"{split}.{ext}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: missing; SPLAT needs one transcript per row of {tsv}")
    return load_labels(path, len(rows), tsv)


def read_spans(path: str, num_rows: int, tsv: str) -> np.ndarray:
    """(num_rows, 2) float32 answer spans in seconds from ``start_s end_s`` lines; errors name the line."""
    spans = []
    for i, line in enumerate(load_labels(path, num_rows, tsv)):
        try:
            a, b = (float(x) for x in line.split())
        except ValueError:
            raise ValueError(f"{path}:{i + 1}: expected 'start_s end_s', got {line!r}") from None
        if not (0 <= a < b) or not math.isfinite(b):
            raise ValueError(f"{path}:{i + 1}: span {a} .. {b} is not a positive interval in seconds")
        spans.append((a, b))
    return np.array(spans, dtype=np.float32).reshape(-1, 2)
