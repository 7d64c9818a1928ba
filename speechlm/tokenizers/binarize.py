"""Upsampled units + letters -> fairseq mmap indexed datasets for ``speechlm_pretraining`` (``binarize``).

``binarize(units, letters, unit_dict, letter_dict, dest, split)`` writes
``dest/{split}.{unit}-ltr.{unit}.{bin,idx}`` and ``dest/{split}.{unit}-ltr.ltr.{bin,idx}`` (unit = ``phn`` or
``km``, the unit dictionary's label name), copies the two dictionaries to ``dest/dict.{unit}.txt`` and
``dest/dict.ltr.txt`` and returns (and writes, ``{split}.{unit}-ltr.summary.json``) the counts. Encoding is
fairseq-preprocess's own (``FileBinarizer`` + ``VocabularyDatasetBinarizer``; ``</s>`` appended to every
line), so the unit ids agree with the speech side's labels read with the same dictionary. Symbols missing
from a dictionary (the phonemizer's ``SPN``) become ``<unk>``; they are counted and reported.
"""
import json
import os
import re
import shutil
from collections import Counter

import torch
from fairseq.binarizer import FileBinarizer, VocabularyDatasetBinarizer
from fairseq.data import Dictionary

from speechlm.tokenizers.phonemizer import count_lines


def unit_name(dict_path: str) -> str:
    """``dict.phn.txt`` -> ``phn``; ``dict.km.txt`` -> ``km``."""
    m = re.fullmatch(r"dict\.([A-Za-z0-9_]+)\.txt", os.path.basename(dict_path))
    if not m:
        raise ValueError(
            f"{dict_path}: a unit dictionary must be named dict.<unit>.txt (dict.phn.txt or "
            "dict.km.txt); the <unit> part names the output files"
        )
    return m.group(1)


class FastVocabularyBinarizer(VocabularyDatasetBinarizer):
    """fairseq's ``VocabularyDatasetBinarizer`` with a whitespace split and one dict lookup per token
    (same ids, same ``</s>``, same replaced-word counts). About 15x faster than ``Dictionary.encode_line``:
    3000 lines of 300 units took 0.36 s against 5.4 s of CPU."""

    def __init__(self, dictionary):
        super().__init__(dictionary, append_eos=True)

    def binarize_line(self, line, summary):
        if summary.replaced is None:
            summary.replaced = Counter()
        index, unk = self.dict.indices, self.dict.unk_index
        tokens = line.split()
        ids = [index.get(t, unk) for t in tokens]
        if unk in ids:
            summary.replaced.update(t for t, i in zip(tokens, ids) if i == unk and t != self.dict.unk_word)
        ids.append(self.dict.eos_index)
        summary.num_seq += 1
        summary.num_tok += len(ids)
        return torch.IntTensor(ids)


def _check_aligned(units: str, letters: str) -> int:
    nu, nl = count_lines(units), count_lines(letters)
    if nu != nl:
        raise ValueError(
            f"{units} has {nu} lines but {letters} has {nl}; the unit and letter files must be "
            "line-aligned (write both with the same phonemize / t2u generate run)"
        )
    return nu


def binarize(units, letters, unit_dict, letter_dict, dest, split="train", workers=1) -> dict:
    """Binarize a unit/letter pair; returns a summary dict (also written to ``dest``)."""
    unit = unit_name(unit_dict)
    n = _check_aligned(units, letters)
    os.makedirs(dest, exist_ok=True)
    summary = {"lines": n, "unit": unit}
    for kind, src, dict_path, sym in (("units", units, unit_dict, unit), ("letters", letters, letter_dict, "ltr")):
        d = Dictionary.load(dict_path)
        prefix = os.path.join(dest, f"{split}.{unit}-ltr.{sym}")
        s = FileBinarizer.multiprocess_dataset(
            src, "mmap", FastVocabularyBinarizer(d), prefix,
            vocab_size=len(d), num_workers=workers,
        )
        if s.num_seq != n:
            raise RuntimeError(f"{src}: binarized {s.num_seq} lines, expected {n}")
        summary[kind] = {
            "tokens": s.num_tok,
            "replaced_by_unk": s.num_replaced,
            "replaced": dict(s.replaced.most_common(20)) if s.replaced else {},
        }
        target = os.path.join(dest, f"dict.{sym}.txt")
        if not (os.path.exists(target) and os.path.samefile(dict_path, target)):
            shutil.copyfile(dict_path, target)
    with open(os.path.join(dest, f"{split}.{unit}-ltr.summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary
