"""A model is decoded with the dictionary it was trained with, or not at all.

A fine-tuned model (``speechlm_ctc``, ``speechlm_st``) saves the symbols of its output dictionary in its
config (``model.target_symbols``, filled when the model is first built). When the model is built again
from a checkpoint (``speechlm infer``, ``fairseq-generate``, anything using fairseq's loaders), the task's
dictionary must list the same symbols in the same order: ids are positions in that list, so a dictionary
rewritten in another order (``dict.ltr.txt`` recounted on another split) would decode every letter as
another one. :func:`require_same_symbols` raises a ``UserError`` naming both and the first difference.
"""
import os
from typing import Optional, Sequence

from speechlm.errors import UserError


def dictionary_path(task) -> str:
    """Where the task's target dictionary came from, for messages."""
    cfg = getattr(task, "cfg", None)
    data = getattr(cfg, "data", None) or getattr(getattr(task, "args", None), "data", None)
    data_cfg = getattr(task, "data_cfg", None)  # fairseq's speech_to_text
    if data_cfg is not None and data:
        return os.path.join(data, data_cfg.vocab_filename)
    if data and getattr(cfg, "fine_tuning", True):
        return os.path.join(data, "dict.ltr.txt")
    return f"the task's target dictionary (task.data={data})"


def first_difference(stored: Sequence[str], current: Sequence[str]) -> Optional[str]:
    """None when equal; else what differs, in words."""
    stored, current = list(stored), list(current)
    if stored == current:
        return None
    if len(stored) != len(current):
        extra = sorted(set(current) - set(stored))[:5]
        missing = sorted(set(stored) - set(current))[:5]
        return (f"{len(stored)} symbols in the model, {len(current)} in the dictionary"
                + (f"; not in the model: {' '.join(extra)}" if extra else "")
                + (f"; missing from the dictionary: {' '.join(missing)}" if missing else ""))
    i = next(k for k, (a, b) in enumerate(zip(stored, current)) if a != b)
    moved = sum(a != b for a, b in zip(stored, current))
    same_set = sorted(stored) == sorted(current)
    return (f"id {i} is {stored[i]!r} in the model but {current[i]!r} in the dictionary ({moved} of "
            f"{len(stored)} ids differ" + ("; the same symbols in another order" if same_set else "") + ")")


def require_same_symbols(stored, dictionary, dict_where: str, model_where: str) -> None:
    """``UserError`` if ``dictionary`` (a fairseq Dictionary) lists other symbols than ``stored``."""
    if stored is None:
        return
    diff = first_difference(stored, dictionary.symbols)
    if diff is None:
        return
    raise UserError(
        f"{dict_where} is not the dictionary {model_where} was trained with ({diff}); decoding with it would "
        "turn every id into the wrong symbol. Give the model's own dictionary (the dict.ltr.txt / vocabulary of "
        "its training data: point task.data at that directory, or copy the file back); a dictionary rewritten "
        "for another split (speechlm labels without --dict) is the usual cause"
    )
