"""Upsampled units + letters -> fairseq mmap indexed datasets for ``speechlm_pretraining`` (``binarize``).

``binarize(units, letters, unit_dict, letter_dict, dest, split)`` writes
``dest/{split}.{unit}-ltr.{unit}.{bin,idx}`` and ``dest/{split}.{unit}-ltr.ltr.{bin,idx}`` (unit = ``phn`` or
``km``, the unit dictionary's label name), copies the two dictionaries to ``dest/dict.{unit}.txt`` and
``dest/dict.ltr.txt`` and returns (and writes, ``{split}.{unit}-ltr.summary.json``) the counts. Encoding is
fairseq-preprocess's own (``FileBinarizer`` + ``VocabularyDatasetBinarizer``; ``</s>`` appended to every
line), so the unit ids agree with the speech side's labels read with the same dictionary.

Symbols outside a dictionary: the phonemizer's unknown-word unit ``SPN`` is, by design, the unit
dictionary's ``<unk>`` when ``dict.phn.txt`` does not hold it (the speech side never emits it; the Kaldi
inventory does hold ``SPN_S``); it is counted. Any other symbol outside its dictionary (a digit in the
letters, a phone of another inventory) is an error naming the file, line and symbol, unless
``allow_unk=True`` (``--allow-unk``) maps it to ``<unk>`` too.

All files of one split are written as one unit (:class:`speechlm.atomic.AtomicGroup`): into a temporary
directory beside them, then renamed, the summary (the completion marker) removed first and renamed last,
recording every file's size. :func:`speechlm.data.unit_text_dataset.check_binarized`, called by the loader, refuses a split without its
summary, or whose files' sizes differ from it or from their own index: a killed or concurrent binarize
never leaves something that training trusts.
"""
import json
import os
import re
import shutil
from collections import Counter

import torch
from fairseq.binarizer import FileBinarizer, VocabularyDatasetBinarizer
from fairseq.data import Dictionary

from speechlm.atomic import AtomicGroup, ensure_dir, temp_name
from speechlm.errors import UserError, os_error
from speechlm.tokenizers.lexicon import UNK_UNIT
from speechlm.tokenizers.phonemizer import count_lines

ALLOWED_UNK = {UNK_UNIT}  # the phonemizer's unknown-word unit: <unk> of a dict.phn.txt without it


def unit_name(dict_path: str) -> str:
    """``dict.phn.txt`` -> ``phn``; ``dict.km.txt`` -> ``km``."""
    m = re.fullmatch(r"dict\.([A-Za-z0-9_]+)\.txt", os.path.basename(dict_path))
    if not m:
        raise UserError(
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
        raise UserError(
            f"{units} has {nu} lines but {letters} has {nl}; the unit and letter files must be "
            "line-aligned (write both with the same phonemize / t2u generate run)"
        )
    if nu == 0:
        raise UserError(f"{units} and {letters} are empty: nothing to binarize; check the phonemize / t2u "
                        "generate step that wrote them (an empty input text?)")
    return nu


def _first_line_with(path: str, symbol: str):
    """``(line number, line)`` of the first line of ``path`` that holds ``symbol`` as a token."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, start=1):
            if symbol in line and symbol in line.split():
                return lineno, line.strip()
    return None, ""


def _refuse_unknown(src: str, dict_path: str, replaced: Counter, allowed) -> None:
    bad = [(s, c) for s, c in replaced.most_common() if s not in allowed]
    if not bad:
        return
    sym, count = bad[0]
    lineno, _ = _first_line_with(src, sym)
    others = ", ".join(repr(s) for s, _ in bad[1:6])
    digits = any(ch.isdigit() for s, _ in bad for ch in s)
    raise UserError(
        f"{src}:{lineno}: symbol {sym!r} is not in {dict_path} ({count} times in the file"
        + (f"; also {others}" if others else "") + "). "
        + ("Digits have no letters in the dictionary: write numbers as words in the text before phonemize "
           "(or drop those lines). " if digits else "")
        + "Use the dictionary the data was made with, or pass --allow-unk to map them to <unk>; nothing was "
          "written"
    )


def binarize(units, letters, unit_dict, letter_dict, dest, split="train", workers=1, allow_unk=False) -> dict:
    """Binarize a unit/letter pair as one unit; returns a summary dict (also written to ``dest``)."""
    unit = unit_name(unit_dict)
    n = _check_aligned(units, letters)
    ensure_dir(dest)
    stem = f"{split}.{unit}-ltr"
    marker = os.path.join(dest, f"{stem}.summary.json")
    summary = {"lines": n, "unit": unit, "files": {}}
    tmp_dir = temp_name(os.path.join(dest, "." + stem))
    try:
        os.mkdir(tmp_dir)
        with AtomicGroup(marker=marker, what="binarized text") as group:
            for kind, src, dict_path, sym in (("units", units, unit_dict, unit),
                                              ("letters", letters, letter_dict, "ltr")):
                d = Dictionary.load(dict_path)
                name = f"{stem}.{sym}"
                s = FileBinarizer.multiprocess_dataset(
                    src, "mmap", FastVocabularyBinarizer(d), os.path.join(tmp_dir, name),
                    vocab_size=len(d), num_workers=workers,
                )
                if s.num_seq != n:
                    raise UserError(f"{src}: binarized {s.num_seq} lines, expected {n} (the file changed while "
                                    "it was read?); run binarize again")
                allowed = (ALLOWED_UNK if kind == "units" else set()) | {d.unk_word}
                if not allow_unk and s.replaced:
                    _refuse_unknown(src, dict_path, s.replaced, allowed)
                summary[kind] = {
                    "tokens": s.num_tok,
                    "replaced_by_unk": s.num_replaced,
                    "replaced": dict(s.replaced.most_common(20)) if s.replaced else {},
                }
                for ext in ("bin", "idx"):
                    tmp = os.path.join(tmp_dir, f"{name}.{ext}")
                    group.tmp[os.path.join(dest, f"{name}.{ext}")] = tmp
                    summary["files"][f"{name}.{ext}"] = os.path.getsize(tmp)
                target = os.path.join(dest, f"dict.{sym}.txt")
                if not (os.path.exists(target) and os.path.samefile(dict_path, target)):
                    tmp = os.path.join(tmp_dir, f"dict.{sym}.txt")
                    shutil.copyfile(dict_path, tmp)
                    group.tmp[target] = tmp
            with open(group.path(marker), "w", encoding="utf-8") as f:
                json.dump(summary, f, indent=1)
    except OSError as e:
        raise os_error(e, dest, "binarized text") from None
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return summary
