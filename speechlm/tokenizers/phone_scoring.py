"""Scoring frame-level phone labels against the true alignments: frame accuracy and phone error rate."""
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from speechlm.tokenizers.lexicon import SIL


def collapse(labels: Sequence[str], drop: Tuple[str, ...] = (SIL,)) -> List[str]:
    """Runs of identical frame labels -> one label each, ``drop`` units removed."""
    out, prev = [], None
    for x in labels:
        if x != prev and x not in drop:
            out.append(x)
        prev = x
    return out


def score_labels(hyp: List[Sequence[str]], ref: List[Sequence[str]],
                 speakers: Optional[Sequence[str]] = None) -> dict:
    """Frame accuracy and phone error rate (collapsed, SIL dropped) of frame-level phone labels; with
    ``speakers`` (one name per utterance) also ``by_speaker``: the same two figures per speaker."""
    import editdistance

    if speakers is not None and len(speakers) != len(ref):
        raise ValueError(f"{len(speakers)} speakers but {len(ref)} utterances")
    total = np.zeros(4, dtype=np.int64)  # frames, correct frames, phone errors, reference phones
    per_speaker: Dict[str, np.ndarray] = {}
    for i, (h, r) in enumerate(zip(hyp, ref)):
        if len(h) != len(r):
            raise ValueError(f"utterance {i + 1}: {len(h)} hypothesis frames but {len(r)} reference frames")
        rc = collapse(r)
        counts = np.array([len(r), sum(a == b for a, b in zip(h, r)), editdistance.eval(collapse(h), rc), len(rc)])
        total += counts
        if speakers is not None:
            per_speaker[speakers[i]] = per_speaker.get(speakers[i], 0) + counts

    def figures(t: np.ndarray) -> dict:
        return {"frame_accuracy": int(t[1]) / max(1, int(t[0])), "phone_error_rate": int(t[2]) / max(1, int(t[3]))}

    out = {"utterances": len(ref), "frames": int(total[0]), **figures(total)}
    if speakers is not None:
        out["by_speaker"] = {s: figures(t) for s, t in sorted(per_speaker.items())}
    return out
