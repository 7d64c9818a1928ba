"""The one place that reads a fairseq audio manifest, its audio files and its label files.

A manifest ``{split}.tsv`` is fairseq's wav2vec/HuBERT format::

    /abs/path/of/the/audio
    relative/path.wav<TAB>num_samples
    ...

and every label file (``.wrd .ltr .phn .phn100 .km .spk``) has one line per manifest row, in order.
Every error names the file and the 1-based line number a text editor shows: in a manifest the root is
line 1, so row ``i`` (0-based) is line ``i + 2``; in a label file row ``i`` is line ``i + 1``.

- ``Manifest.load(path)``: the rows; ``manifest.audio(i)`` reads row ``i`` and checks it against the
  manifest (sample count, rate, channels); ``manifest.audio_errors(i)`` checks without decoding.
- ``LabelFile(path, num_rows, manifest_path, dictionary)``: one label line per row, read lazily
  (a LibriSpeech ``.km`` is GBs); ``encode(i)`` maps a line's symbols through the dictionary.
- ``load_labels``: a small label file read whole, as a list of lines.
"""
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from speechlm.data.manifest import RESAMPLE_HINT, SAMPLE_RATE
from speechlm.errors import UserError, UserFileNotFoundError

REGENERATE_MANIFEST = "regenerate the manifest (`speechlm manifest`) or fix the count"


BOM = "\ufeff"
# lets a manifest row point outside its root directory (``../x.wav``, ``/abs/x.wav``)
ALLOW_OUTSIDE_ROOT_ENV = "SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"


def decode_utf8(path: str, data: bytes, first_line: int = 1) -> str:
    """``data`` (the bytes of ``path`` from line ``first_line`` on) as text; a ``UserError`` naming the
    line for a byte that is not UTF-8 or a byte-order mark at the start of the file."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = first_line + data.count(b"\n", 0, e.start)
        raise UserError(
            f"{path}:{line}: byte 0x{data[e.start]:02x} is not UTF-8 ({e.reason}); speechlm reads text "
            f"as UTF-8: convert the file, e.g. `iconv -f latin1 -t utf-8 {path} > fixed && mv fixed {path}`"
        ) from None
    if first_line == 1 and text.startswith(BOM):
        raise UserError(
            f"{path}:1: starts with a UTF-8 byte-order mark (BOM), which would become part of the first "
            f"symbol; remove it: `sed -i '1s/^\\xEF\\xBB\\xBF//' {path}`"
        )
    return text


def read_lines(path: str) -> List[str]:
    """The lines of a UTF-8 text file, without their newlines (a final newline adds no empty line).
    A non-UTF-8 byte or a BOM is a ``UserError`` naming the line."""
    path = str(path)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: file not found")
    with open(path, "rb") as f:
        lines = decode_utf8(path, f.read()).split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _outside_root(rel: str) -> bool:
    return os.path.isabs(rel) or os.path.normpath(rel).split(os.sep)[0] == ".."


def load_manifest(tsv_path: str, allow_outside_root: Optional[bool] = None) -> Tuple[str, List[Tuple[str, int]]]:
    """Read a fairseq manifest.

    Returns ``(root, rows)`` with ``rows`` a list of ``(relative_path, num_samples)``.
    Raises ``UserError`` (a ``ValueError``) naming the file and line for an empty file, a malformed row,
    or a path that leaves the root (absolute, or ``../``) unless ``allow_outside_root`` (default: the
    environment variable ``SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT=1``).
    """
    if allow_outside_root is None:
        allow_outside_root = os.environ.get(ALLOW_OUTSIDE_ROOT_ENV, "") not in ("", "0")
    tsv_path = str(tsv_path)
    lines = read_lines(tsv_path)
    if not lines or not lines[0].strip():
        raise UserError(
            f"{tsv_path}:1: empty manifest; the first line must be the root directory of the audio"
        )
    root = lines[0].strip()
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0]:
            raise UserError(
                f"{tsv_path}:{lineno}: malformed manifest row {line!r}; expected "
                "'relative/path.wav<TAB>num_samples' (tab-separated)"
            )
        try:
            n = int(parts[1])
        except ValueError:
            raise UserError(
                f"{tsv_path}:{lineno}: sample count {parts[1]!r} is not an integer; expected "
                "'relative/path.wav<TAB>num_samples'"
            ) from None
        if n < 0:
            raise UserError(f"{tsv_path}:{lineno}: negative sample count {n}")
        if not allow_outside_root and _outside_root(parts[0]):
            raise UserError(
                f"{tsv_path}:{lineno}: path {parts[0]!r} leaves the manifest's root {root}; rows must be "
                f"relative paths under it (regenerate with `speechlm manifest`), or set "
                f"{ALLOW_OUTSIDE_ROOT_ENV}=1 if you mean it"
            )
        rows.append((parts[0], n))
    return root, rows


@dataclass
class Manifest:
    """A loaded manifest: ``path``, ``root`` and ``rows`` ``[(relative_path, num_samples)]``."""

    path: str
    root: str
    rows: List[Tuple[str, int]]

    @classmethod
    def load(cls, path: str) -> "Manifest":
        root, rows = load_manifest(path)
        return cls(str(path), root, rows)

    def __len__(self) -> int:
        return len(self.rows)

    def line(self, i: int) -> int:
        """1-based line of row ``i`` in the file (the root is line 1)."""
        return i + 2

    def where(self, i: int) -> str:
        """``manifest:line: audio_path`` of row ``i``, the prefix of every error about it."""
        return f"{self.path}:{self.line(i)}: {self.audio_path(i)}"

    def audio_path(self, i: int) -> str:
        return os.path.join(self.root, self.rows[i][0])

    def num_samples(self, i: int) -> int:
        return self.rows[i][1]

    def _count_error(self, i: int, actual: int) -> str:
        return (f"{self.where(i)}: the file has {actual} samples but the manifest says "
                f"{self.num_samples(i)}; {REGENERATE_MANIFEST}")

    def audio(self, i: int) -> np.ndarray:
        """Row ``i``'s audio, float32 (num_samples,) in [-1, 1]; ``ValueError`` naming the manifest line
        if the file is missing, unreadable, not 16 kHz mono or not as long as the manifest says."""
        try:
            wav = read_audio(self.audio_path(i))
        except (FileNotFoundError, ValueError) as e:
            cls = UserFileNotFoundError if isinstance(e, FileNotFoundError) else UserError
            raise cls(f"{self.path}:{self.line(i)}: {e}") from None
        if len(wav) != self.num_samples(i):
            raise UserError(self._count_error(i, len(wav)))
        return wav

    def audio_errors(self, i: int) -> List[str]:
        """What is wrong with row ``i``'s file (missing, rate, channels, length), without decoding it."""
        frames, errors = audio_file_errors(self.audio_path(i))
        fix = "" if frames is not None else "; fix the row or restore the file"
        errors = [f"{self.path}:{self.line(i)}: {e}{fix}" for e in errors]
        if frames is not None and frames != self.num_samples(i):
            errors.append(self._count_error(i, frames))
        return errors


def _count_mismatch(path: str, n_lines: int, num_rows: int, manifest_path: Optional[str]) -> str:
    against = f"manifest {manifest_path}" if manifest_path else "the manifest"
    return (f"{path}:{min(n_lines, num_rows) + 1}: has {n_lines} lines but {against} has {num_rows} "
            "rows; a label file needs exactly one line per manifest row (regenerate it from the same "
            "manifest)")


def load_labels(path: str, num_rows: int, manifest_path: Optional[str] = None) -> List[str]:
    """Read a (small) label file with one line per manifest row (no trailing newline kept).

    Raises ``ValueError`` naming both files and both counts when the line count is not ``num_rows``.
    """
    path = str(path)
    lines = read_lines(path)
    if len(lines) != num_rows:
        raise UserError(_count_mismatch(path, len(lines), num_rows, manifest_path))
    return lines


class LabelFile:
    """A label file with one line per manifest row, read lazily (byte offsets are indexed once).

    ``dictionary`` (a fairseq ``Dictionary``, optional) is what ``encode`` maps symbols through; a symbol
    outside it is a ``UserError`` naming the line and the symbol, unless ``allow_unk`` (then it maps to
    ``<unk>``, counted in ``num_unk``). ``line(i)`` -> the text of row ``i``; ``tokens(i)`` -> its symbols;
    ``encode(tokens, i)`` -> ids; ``where(i)`` -> ``path:line`` (1-based) for errors about row ``i``;
    ``check_symbols()`` validates the whole file in one pass.
    """

    def __init__(self, path: str, num_rows: int, manifest_path: Optional[str] = None, dictionary=None,
                 allow_unk: bool = False):
        self.path, self.dictionary, self.allow_unk = str(path), dictionary, allow_unk
        self.num_unk = 0
        if not os.path.isfile(self.path):
            raise UserFileNotFoundError(f"{self.path}: label file not found (one line per row of {manifest_path})")
        offsets, lengths = [], []
        with open(self.path, "rb") as f:
            pos = 0
            for raw in f:
                if pos == 0 and raw.startswith(b"\xef\xbb\xbf"):
                    decode_utf8(self.path, raw)  # raises: names the BOM
                offsets.append(pos)
                lengths.append(len(raw))
                pos += len(raw)
        if len(offsets) != num_rows:
            raise UserError(_count_mismatch(self.path, len(offsets), num_rows, manifest_path))
        self.offsets = np.array(offsets, dtype=np.int64)
        self.lengths = np.array(lengths, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, i: int) -> str:
        return f"{self.path}:{i + 1}"

    def line(self, i: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            raw = f.read(self.lengths[i])
        return decode_utf8(self.path, raw, first_line=i + 1).rstrip("\n")

    def tokens(self, i: int) -> List[str]:
        return self.line(i).split()

    def _lines(self):
        with open(self.path, "rb") as f:
            for i, raw in enumerate(f):
                yield i, decode_utf8(self.path, raw, first_line=i + 1)

    def token_counts(self) -> List[int]:
        """Number of symbols on every line (one pass over the file)."""
        return [len(line.split()) for _, line in self._lines()]

    def _unknown(self, symbol: str, i: Optional[int]) -> UserError:
        d = self.dictionary
        hint = "regenerate the labels with this dictionary, or add the symbol to the dictionary file"
        if symbol.upper() != symbol and symbol.upper() in d.indices:
            hint = f"the dictionary has {symbol.upper()!r}: upper-case the transcripts"
        elif symbol.isdigit() and all(s.isdigit() for s in d.symbols[d.nspecial:]):
            k = len(d) - d.nspecial
            hint = (f"k-means id {symbol} >= K={k}: the labels come from another k-means model than "
                    "this dictionary (regenerate one or the other)")
        where = self.where(i) if i is not None else self.path
        return UserError(f"{where}: symbol {symbol!r} is not in the dictionary ({len(d)} symbols); {hint}"
                         + ("" if i is None else "; or map them to <unk> on purpose: task.allow_unk_labels=true"))

    def encode(self, tokens: Sequence[str], i: Optional[int] = None) -> List[int]:
        """Symbol ids from ``dictionary``; a symbol outside it is a ``UserError`` naming row ``i``'s line
        (``allow_unk``: it maps to ``<unk>``)."""
        d = self.dictionary
        ids = [d.indices.get(t, -1) for t in tokens]
        if -1 in ids:
            bad = tokens[ids.index(-1)]
            if not self.allow_unk:
                raise self._unknown(bad, i)
            self.num_unk += ids.count(-1)
            ids = [d.unk() if x == -1 else x for x in ids]
        return ids

    def check_symbols(self) -> List[int]:
        """One pass: every symbol is in the dictionary (else ``UserError`` naming the first bad line);
        returns the symbol count of every line."""
        counts, known = [], self.dictionary.indices
        for i, line in self._lines():
            toks = line.split()
            counts.append(len(toks))
            if not self.allow_unk:
                for t in toks:
                    if t not in known:
                        raise self._unknown(t, i)
        return counts


def read_audio(path: str, expected_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a mono audio file as float32 in [-1, 1], shape (num_samples,).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an unreadable file,
    a wrong sample rate or more than one channel, each naming the file and what to do.
    Prefer ``Manifest.audio(i)``, which also checks the manifest's sample count.
    """
    import soundfile as sf

    path = str(path)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: audio file not found (check the manifest's root line)")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for corrupt files
        raise UserError(f"{path}: cannot read audio ({e}); re-create or remove the file") from None
    if sr != expected_sr:
        raise UserError(
            f"{path}: is {sr} Hz; speechlm expects {expected_sr} Hz mono: {RESAMPLE_HINT}"
        )
    if wav.shape[1] != 1:
        raise UserError(
            f"{path}: has {wav.shape[1]} channels; speechlm expects {expected_sr} Hz mono: "
            f"{RESAMPLE_HINT}"
        )
    if not np.isfinite(wav).all():  # a float WAV can hold NaN/Inf: it would train or decode to nonsense
        k = int(np.flatnonzero(~np.isfinite(wav[:, 0]))[0])
        raise UserError(f"{path}: holds NaN or infinite samples (the first at sample {k}, {k / sr:.3f} s); "
                        "re-create the file from its source, or drop the row from the manifest")
    return wav[:, 0]


def audio_file_errors(path: str) -> Tuple[Optional[int], List[str]]:
    """``(num_samples or None, problems)`` of an audio file, without decoding it: missing or unreadable,
    or not 16 kHz mono. Each problem names the file and what to do."""
    try:
        sr, ch, frames = audio_info(path)
    except (FileNotFoundError, ValueError) as e:
        return None, [str(e)]
    if sr != SAMPLE_RATE or ch != 1:
        return frames, [f"{path}: is {sr} Hz with {ch} channel(s); speechlm expects {SAMPLE_RATE} Hz mono: "
                        f"{RESAMPLE_HINT}"]
    readable = readable_samples(path, frames)
    if readable != frames:  # e.g. a FLAC cut short keeps its STREAMINFO sample count
        return readable, [f"{path}: is damaged or cut short: its header says {frames} samples but only "
                          f"{readable} can be decoded; re-create the file or remove it"]
    return frames, []


def audio_info(path: str) -> Tuple[int, int, int]:
    """``(sample_rate, channels, num_samples)`` of an audio file, without decoding it.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file, like ``read_audio``.
    """
    import soundfile as sf

    path = str(path)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: audio file not found")
    try:
        info = sf.info(path)
    except Exception as e:
        raise UserError(f"{path}: cannot read audio ({e}); re-create or remove the file") from None
    return info.samplerate, info.channels, info.frames


def readable_samples(path: str, claimed: int, block: int = 1 << 16) -> int:
    """How many of the ``claimed`` samples of ``path`` (its header's count) can really be decoded.

    A file cut short can keep a header that promises more (FLAC's STREAMINFO; some WAV writers): the
    last sample is read first (cheap); only if that fails is the file decoded block by block to count.
    """
    import soundfile as sf

    if claimed <= 0:
        return 0
    try:
        with sf.SoundFile(path) as f:
            f.seek(claimed - 1)
            if len(f.read(1, dtype="float32")) == 1:
                return claimed
    except Exception:  # noqa: BLE001 - libsndfile reports a damaged stream in many ways
        pass
    n = 0
    try:
        with sf.SoundFile(path) as f:
            while True:
                got = len(f.read(block, dtype="float32"))
                n += got
                if got < block:
                    break
    except Exception:  # noqa: BLE001
        pass
    return n


def load_dictionary(path: str, what: str = ""):
    """A fairseq ``Dictionary`` from ``symbol count`` lines, checked first: UTF-8 without a BOM (else the
    BOM becomes part of the first symbol), two fields per line, no symbol twice. ``UserError`` naming the
    line otherwise."""
    from fairseq.data import Dictionary

    path = str(path)
    if not os.path.isfile(path):
        raise UserFileNotFoundError(f"{path}: {what + ' ' if what else ''}dictionary not found")
    seen = {}
    for lineno, line in enumerate(read_lines(path), start=1):
        parts = line.split()
        if parts[2:] == ["#fairseq:overwrite"]:
            parts = parts[:2]
        if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
            raise UserError(f"{path}:{lineno}: {line!r} is not 'symbol count' (a fairseq dictionary line)")
        if parts[0] in seen:
            raise UserError(f"{path}:{lineno}: symbol {parts[0]!r} repeats line {seen[parts[0]]}; "
                            "each symbol once")
        seen[parts[0]] = lineno
    return Dictionary.load(path)
