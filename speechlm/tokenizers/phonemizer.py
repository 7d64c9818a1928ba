"""Text -> upsampled phoneme units (+ letters), reproducible from a seed and shardable.

For every input line: normalize (``lexicon.normalize_text``), look each word up in the lexicon (unknown
word -> one ``SPN`` unit, counted), put ``SIL`` at both sentence edges and between two words with
probability ``sil_prob``, then repeat each unit max(1, round(N(mu, sigma))) times (``upsample``).

Reproducibility across shards: lines are processed in blocks of ``BLOCK_LINES`` consecutive lines and
block ``b`` draws its random numbers from ``numpy.random.default_rng([seed, b])``. A shard is a
contiguous range of whole blocks, so 1 shard and N shards merged give byte-identical files.

What happens to awkward input (also in ``PhonemizeStats``):

- empty lines, or lines with no word after normalization (only punctuation): dropped, counted;
- lines whose upsampled length exceeds ``max_len`` frames: dropped, counted;
- non-ASCII characters: accents folded, others dropped, counted;
- unknown words (including any word with a digit): ``SPN``, counted, most frequent ones reported;
  their letters still go to the ``.ltr`` line.
"""
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np

from speechlm.atomic import AtomicGroup, atomic_write
from speechlm.tokenizers.lexicon import Lexicon, letters, normalize_text
from speechlm.tokenizers.shards import concat_shards
from speechlm.tokenizers.upsample import DurationTable, sample_repeats

# Lines per random-number block. Part of what a seed means: changing it changes the output.
BLOCK_LINES = 1000
_CACHED_REPEATS = 64
DEFAULT_SIL_PROB = 0.25


@dataclass
class PhonemizeStats:
    lines_in: int = 0
    lines_out: int = 0
    empty_lines: int = 0
    too_long_lines: int = 0
    non_ascii_chars: int = 0
    words: int = 0
    unk_words: int = 0
    word_boundaries: int = 0
    sil_boundaries: int = 0
    units: int = 0
    frames: int = 0
    unk_counts: Counter = field(default_factory=Counter)

    def merge(self, other: "PhonemizeStats") -> None:
        for k, v in asdict(other).items():
            if k == "unk_counts":
                self.unk_counts.update(other.unk_counts)
            else:
                setattr(self, k, getattr(self, k) + v)

    def to_json(self) -> dict:
        d = asdict(self)
        d["unk_counts"] = dict(self.unk_counts)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "PhonemizeStats":
        d = dict(d)
        d["unk_counts"] = Counter(d.get("unk_counts", {}))
        return cls(**d)

    def report(self, top: int = 10) -> str:
        unk_pct = 100.0 * self.unk_words / max(1, self.words)
        sil_pct = 100.0 * self.sil_boundaries / max(1, self.word_boundaries)
        lines = [
            f"lines: {self.lines_in} in, {self.lines_out} out; dropped {self.empty_lines} empty "
            f"(no word after normalization), {self.too_long_lines} longer than --max-len",
            f"words: {self.words}, unknown -> SPN: {self.unk_words} ({unk_pct:.2f}%); "
            f"non-ASCII characters folded or dropped: {self.non_ascii_chars}",
            f"SIL at {self.sil_boundaries}/{self.word_boundaries} word boundaries ({sil_pct:.1f}%); "
            f"{self.units} units -> {self.frames} frames",
        ]
        if self.unk_counts:
            common = ", ".join(f"{w} {c}" for w, c in self.unk_counts.most_common(top))
            lines.append(f"most frequent unknown words: {common}")
        return "\n".join(lines)


class Phonemizer:
    """Turns blocks of text lines into ``(phn_line, ltr_line)`` pairs; see the module docstring."""

    def __init__(
        self,
        lexicon: Lexicon,
        durations: Optional[DurationTable] = None,
        sil_prob: float = DEFAULT_SIL_PROB,
        max_len: Optional[int] = None,
    ):
        if not 0.0 <= sil_prob <= 1.0:
            raise ValueError(f"sil_prob must be in [0, 1], got {sil_prob}")
        inv = lexicon.inventory  # the units: ARPAbet (default) or Kaldi position-dependent
        self.lexicon = lexicon
        self.units = inv.units
        self.sil_id, self.unk_pron = inv.sil_id, (inv.unk_id,)
        self.durations = durations or DurationTable.default(units=self.units)
        if len(self.durations.mean) != len(self.units):
            raise ValueError(f"the duration table has {len(self.durations.mean)} units but the lexicon's "
                             f"{inv.name} inventory has {len(self.units)}; build it with units=inventory.units")
        self.sil_prob = sil_prob
        self.max_len = max_len
        # "AH AH AH" built once per (unit, repeat count), not per frame; flat index unit * MAX + count
        self._rep_cache = np.array(
            [" ".join([u] * r) for u in self.units for r in range(_CACHED_REPEATS)], dtype=object
        )

    def phonemize_block(
        self, lines: List[str], block_index: int, seed: int, stats: PhonemizeStats
    ) -> List[Tuple[str, str]]:
        """Phonemize one block of lines with the block's own random stream. Returns kept pairs."""
        rng = np.random.default_rng([seed, block_index])
        get = self.lexicon.prons.get
        kept = []  # (word prons, words)
        n_boundaries = 0
        for line in lines:
            words, n_non_ascii = normalize_text(line)
            stats.non_ascii_chars += n_non_ascii
            if not words:
                stats.empty_lines += 1
                continue
            prons = list(map(get, words))
            if None in prons:
                for i, p in enumerate(prons):
                    if p is None:
                        stats.unk_words += 1
                        stats.unk_counts[words[i]] += 1
                        prons[i] = self.unk_pron
            stats.words += len(words)
            n_boundaries += len(words) - 1
            kept.append((prons, words))
        stats.lines_in += len(lines)
        sil_draws = (rng.random(n_boundaries) < self.sil_prob).tolist()
        flat, starts, pos, sil_id = [], [], 0, self.sil_id
        for prons, _ in kept:
            starts.append(len(flat))
            flat.append(sil_id)
            flat.extend(prons[0])
            for p in prons[1:]:
                if sil_draws[pos]:
                    flat.append(sil_id)
                pos += 1
                flat.extend(p)
            flat.append(sil_id)
        starts.append(len(flat))
        stats.word_boundaries += n_boundaries
        stats.sil_boundaries += sum(sil_draws)
        units = np.asarray(flat, dtype=np.int64)
        reps = sample_repeats(units, self.durations, rng)
        tokens = self._rep_cache[units * _CACHED_REPEATS + np.minimum(reps, _CACHED_REPEATS - 1)].tolist()
        for i in np.flatnonzero(reps >= _CACHED_REPEATS).tolist():  # rare very long runs
            tokens[i] = " ".join([self.units[units[i]]] * int(reps[i]))
        line_frames = np.add.reduceat(reps, starts[:-1]).tolist() if kept else []
        out = []
        for k, (_, words) in enumerate(kept):
            if self.max_len is not None and line_frames[k] > self.max_len:
                stats.too_long_lines += 1
                continue
            a, b = starts[k], starts[k + 1]
            stats.lines_out += 1
            stats.units += b - a
            stats.frames += line_frames[k]
            out.append((" ".join(tokens[a:b]), letters(words)))
        return out


def count_lines(path: str) -> int:
    """Number of lines of a text file (a last line without newline counts)."""
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        while True:
            buf = f.read(1 << 22)
            if not buf:
                break
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (last != b"\n")


def shard_block_range(num_lines: int, nshard: int, rank: int) -> Tuple[int, int]:
    """Blocks ``[start, end)`` of shard ``rank`` out of ``nshard`` (contiguous, whole blocks)."""
    if nshard < 1 or not 0 <= rank < nshard:
        raise ValueError(f"need 0 <= rank < nshard, got rank={rank} nshard={nshard}")
    n_blocks = (num_lines + BLOCK_LINES - 1) // BLOCK_LINES
    return rank * n_blocks // nshard, (rank + 1) * n_blocks // nshard


def iter_blocks(path: str, start_block: int, end_block: int) -> Iterator[Tuple[int, List[str]]]:
    """Yield ``(block_index, lines)`` for blocks ``[start_block, end_block)`` of a UTF-8 text file."""
    first, last = start_block * BLOCK_LINES, end_block * BLOCK_LINES
    with open(path, encoding="utf-8", errors="replace", newline="\n") as f:
        block, lineno = [], 0
        for line in f:
            if lineno >= last:
                break
            if lineno >= first:
                block.append(line.rstrip("\r\n"))
                if len(block) == BLOCK_LINES:
                    yield start_block + (lineno - first) // BLOCK_LINES, block
                    block = []
            lineno += 1
        if block:
            yield start_block + (lineno - 1 - first) // BLOCK_LINES, block


def shard_prefix(out_prefix: str, rank: int, nshard: int) -> str:
    return f"{out_prefix}_{rank}_{nshard}" if nshard > 1 else out_prefix


def phonemize_file(
    input_path: str,
    out_prefix: str,
    phonemizer: Phonemizer,
    seed: int = 0,
    nshard: int = 1,
    rank: int = 0,
) -> PhonemizeStats:
    """Write ``{prefix}.phn``, ``{prefix}.ltr`` and ``{prefix}.stats.json`` for one shard.

    ``prefix`` is ``out_prefix`` for one shard and ``{out_prefix}_{rank}_{nshard}`` otherwise.
    """
    num_lines = count_lines(input_path)
    start, end = shard_block_range(num_lines, nshard, rank)
    prefix = shard_prefix(out_prefix, rank, nshard)
    stats = PhonemizeStats()
    with AtomicGroup(marker=prefix + ".stats.json", what="phonemize output") as g, \
            open(g.path(prefix + ".phn"), "w", encoding="utf-8") as fp, \
            open(g.path(prefix + ".ltr"), "w", encoding="utf-8") as fl:
        for b, lines in iter_blocks(input_path, start, end):
            for phn, ltr in phonemizer.phonemize_block(lines, b, seed, stats):
                fp.write(phn + "\n")
                fl.write(ltr + "\n")
        fp.flush()
        fl.flush()
        with open(g.path(prefix + ".stats.json"), "w", encoding="utf-8") as f:
            json.dump(stats.to_json(), f, indent=1, sort_keys=True)
    return stats


def merge_shards(out_prefix: str, nshard: int, exts: Iterable[str] = ("phn", "ltr")) -> PhonemizeStats:
    """Concatenate the shards ``{out_prefix}_{r}_{nshard}.*`` into ``{out_prefix}.*`` (in rank order)."""
    prefixes = [shard_prefix(out_prefix, r, nshard) for r in range(nshard)]
    missing = [p + ".stats.json" for p in prefixes if not os.path.isfile(p + ".stats.json")]
    if missing:
        raise FileNotFoundError(
            f"cannot merge: {len(missing)} of {nshard} shards are not finished, e.g. {missing[0]}; "
            "run the missing ranks first (a shard is finished when its .stats.json exists)"
        )
    concat_shards(out_prefix, nshard, exts, "run the missing ranks first")
    stats = PhonemizeStats()
    for p in prefixes:
        with open(p + ".stats.json", encoding="utf-8") as f:
            stats.merge(PhonemizeStats.from_json(json.load(f)))
    with atomic_write(out_prefix + ".stats.json", what="phonemize statistics") as f:
        json.dump(stats.to_json(), f, indent=1, sort_keys=True)
    return stats
