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

REGENERATE_MANIFEST = "regenerate the manifest (`speechlm manifest`) or fix the count"


def read_lines(path: str) -> List[str]:
    """The lines of a UTF-8 text file, without their newlines (a final newline adds no empty line)."""
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def load_manifest(tsv_path: str) -> Tuple[str, List[Tuple[str, int]]]:
    """Read a fairseq manifest.

    Returns ``(root, rows)`` with ``rows`` a list of ``(relative_path, num_samples)``.
    Raises ``ValueError`` naming the file and line for an empty file or a malformed row.
    """
    tsv_path = str(tsv_path)
    lines = read_lines(tsv_path)
    if not lines or not lines[0].strip():
        raise ValueError(
            f"{tsv_path}:1: empty manifest; the first line must be the root directory of the audio"
        )
    root = lines[0].strip()
    rows = []
    for lineno, line in enumerate(lines[1:], start=2):
        parts = line.split("\t")
        if len(parts) < 2 or not parts[0]:
            raise ValueError(
                f"{tsv_path}:{lineno}: malformed manifest row {line!r}; expected "
                "'relative/path.wav<TAB>num_samples' (tab-separated)"
            )
        try:
            n = int(parts[1])
        except ValueError:
            raise ValueError(
                f"{tsv_path}:{lineno}: sample count {parts[1]!r} is not an integer; expected "
                "'relative/path.wav<TAB>num_samples'"
            ) from None
        if n < 0:
            raise ValueError(f"{tsv_path}:{lineno}: negative sample count {n}")
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
            raise type(e)(f"{self.path}:{self.line(i)}: {e}") from None
        if len(wav) != self.num_samples(i):
            raise ValueError(self._count_error(i, len(wav)))
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
        raise ValueError(_count_mismatch(path, len(lines), num_rows, manifest_path))
    return lines


class LabelFile:
    """A label file with one line per manifest row, read lazily (byte offsets are indexed once).

    ``dictionary`` (a fairseq ``Dictionary``, optional) is what ``encode`` maps symbols through.
    ``line(i)`` -> the text of row ``i``; ``tokens(i)`` -> its symbols; ``encode(tokens)`` -> ids;
    ``where(i)`` -> ``path:line`` (1-based) for errors about row ``i``.
    """

    def __init__(self, path: str, num_rows: int, manifest_path: Optional[str] = None, dictionary=None):
        self.path, self.dictionary = str(path), dictionary
        offsets, lengths = [], []
        with open(self.path, "rb") as f:
            pos = 0
            for raw in f:
                offsets.append(pos)
                lengths.append(len(raw))
                pos += len(raw)
        if len(offsets) != num_rows:
            raise ValueError(_count_mismatch(self.path, len(offsets), num_rows, manifest_path))
        self.offsets = np.array(offsets, dtype=np.int64)
        self.lengths = np.array(lengths, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.offsets)

    def where(self, i: int) -> str:
        return f"{self.path}:{i + 1}"

    def line(self, i: int) -> str:
        with open(self.path, "rb") as f:
            f.seek(self.offsets[i])
            return f.read(self.lengths[i]).decode("utf-8").rstrip("\n")

    def tokens(self, i: int) -> List[str]:
        return self.line(i).split()

    def token_counts(self) -> List[int]:
        """Number of symbols on every line (one pass over the file)."""
        with open(self.path, encoding="utf-8") as f:
            return [len(line.split()) for line in f]

    def encode(self, tokens: Sequence[str]) -> List[int]:
        """Symbol ids from ``dictionary`` (unknown symbols map to its ``<unk>``)."""
        return [self.dictionary.index(t) for t in tokens]


def read_audio(path: str, expected_sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a mono audio file as float32 in [-1, 1], shape (num_samples,).

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an unreadable file,
    a wrong sample rate or more than one channel, each naming the file and what to do.
    Prefer ``Manifest.audio(i)``, which also checks the manifest's sample count.
    """
    import soundfile as sf

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: audio file not found (check the manifest's root line)")
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises LibsndfileError/RuntimeError for corrupt files
        raise ValueError(f"{path}: cannot read audio ({e}); re-create or remove the file") from None
    if sr != expected_sr:
        raise ValueError(
            f"{path}: is {sr} Hz; speechlm expects {expected_sr} Hz mono: {RESAMPLE_HINT}"
        )
    if wav.shape[1] != 1:
        raise ValueError(
            f"{path}: has {wav.shape[1]} channels; speechlm expects {expected_sr} Hz mono: "
            f"{RESAMPLE_HINT}"
        )
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
    return frames, []


def audio_info(path: str) -> Tuple[int, int, int]:
    """``(sample_rate, channels, num_samples)`` of an audio file, without decoding it.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file, like ``read_audio``.
    """
    import soundfile as sf

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: audio file not found")
    try:
        info = sf.info(path)
    except Exception as e:
        raise ValueError(f"{path}: cannot read audio ({e}); re-create or remove the file") from None
    return info.samplerate, info.channels, info.frames
