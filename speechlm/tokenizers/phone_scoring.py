"""Scoring frame-level phone labels against the true alignments: frame accuracy and phone error rate."""
from typing import List, Sequence, Tuple

from speechlm.tokenizers.lexicon import SIL


def collapse(labels: Sequence[str], drop: Tuple[str, ...] = (SIL,)) -> List[str]:
    """Runs of identical frame labels -> one label each, ``drop`` units removed."""
    out, prev = [], None
    for x in labels:
        if x != prev and x not in drop:
            out.append(x)
        prev = x
    return out


def score_labels(hyp: List[Sequence[str]], ref: List[Sequence[str]]) -> dict:
    """Frame accuracy and phone error rate (collapsed, SIL dropped) of frame-level phone labels."""
    import editdistance

    frames = correct = errors = ref_phones = 0
    for i, (h, r) in enumerate(zip(hyp, ref)):
        if len(h) != len(r):
            raise ValueError(f"utterance {i + 1}: {len(h)} hypothesis frames but {len(r)} reference frames")
        frames += len(r)
        correct += sum(a == b for a, b in zip(h, r))
        rc = collapse(r)
        errors += editdistance.eval(collapse(h), rc)
        ref_phones += len(rc)
    return {"utterances": len(ref), "frames": frames, "frame_accuracy": correct / max(1, frames),
            "phone_error_rate": errors / max(1, ref_phones)}
