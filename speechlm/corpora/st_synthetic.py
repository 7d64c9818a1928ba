"""A deterministic SYNTHETIC target language for the offline mini speech-translation recipe.

No parallel speech-translation data can be had offline, so the mini ST recipe translates English
speech into "Cipherese", a made-up language derived from the English transcript by two fixed,
reversible rules a sequence-to-sequence model has to learn:

1. spelling: every letter goes through a fixed permutation that maps vowels to vowels and consonants
   to consonants (so words stay pronounceable), and the text is lower-cased;
2. word order: each pair of adjacent words is swapped ("the cat sat down" -> "cat the down sat"),
   a local reordering that a monotonic (CTC-like) model cannot produce but attention can.

Both rules are bijective, so ``from_cipherese(to_cipherese(s)) == s`` for upper-case English text.
Copying the English source scores close to 0 BLEU against Cipherese, which makes "copy the source"
the baseline a trained model must beat. Numbers, apostrophes and other symbols pass through.

This is NOT a natural language: figures obtained with it measure the pipeline, not translation
quality; real recipes use CoVoST-2 (``examples/covost2``).

    >>> to_cipherese("AND GOD SAID LET THERE BE LIGHT")
    'mak itk roz yiuk ho znoxo rumnz'
"""
import string

VOWELS = "AEIOU"
CONSONANTS = "BCDFGHJKLMNPQRSTVWXYZ"
# Fixed permutations (a rotation inside each class): vowels by 2, consonants by 5.
_VOWEL_SHIFT = 2
_CONSONANT_SHIFT = 5


def _rotation(letters: str, shift: int) -> dict:
    return {c: letters[(i + shift) % len(letters)] for i, c in enumerate(letters)}


_ENCODE = {**_rotation(VOWELS, _VOWEL_SHIFT), **_rotation(CONSONANTS, _CONSONANT_SHIFT)}
_ENCODE = {k: v.lower() for k, v in _ENCODE.items()}
_DECODE = {v: k for k, v in _ENCODE.items()}
assert sorted(_ENCODE) == list(string.ascii_uppercase) and len(_DECODE) == 26


def _swap_pairs(words):
    out = list(words)
    for i in range(0, len(out) - 1, 2):
        out[i], out[i + 1] = out[i + 1], out[i]
    return out


def to_cipherese(english: str, swap: bool = True) -> str:
    """Upper-case English words (``.wrd`` style) -> Cipherese, one space between words.

    Lower-case input letters are treated as upper-case; the output is lower-case. ``swap=False`` keeps the
    English word order (the letter rule alone: ``cipherese-monotonic``, to measure what the reordering costs).
    """
    words = ["".join(_ENCODE.get(c, c) for c in w.upper()) for w in english.split()]
    return " ".join(_swap_pairs(words) if swap else words)


def from_cipherese(text: str, swap: bool = True) -> str:
    """Inverse of :func:`to_cipherese` (with the same ``swap``): Cipherese -> upper-case English."""
    words = ["".join(_DECODE.get(c, c) for c in w) for w in text.split()]
    return " ".join(_swap_pairs(words) if swap else words)


# `speechlm st prepare --synthetic NAME`
TARGET_LANGUAGES = {
    "cipherese": to_cipherese,
    "cipherese-monotonic": lambda english: to_cipherese(english, swap=False),
}
