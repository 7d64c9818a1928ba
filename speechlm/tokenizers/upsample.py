"""Upsampling of unit sequences to the speech frame rate: each unit repeated max(1, round(N(mu, sigma))).

SpeechLM (Zhang et al., 2022) converts text phones to pseudo frame-level sequences so that text and speech
share the unit space at 50 Hz. The reference recipe draws every phone's repeat count from a normal
distribution whose mean and standard deviation depend on the unit class (DESIGN.md section 5):
ordinary phones N(5, 2.5), SIL N(14, 7), the unknown-word unit SPN N(32, 11). The paper itself says
"mean 5, variance 25" for phones; both are a ``DurationTable`` away.
"""
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

import numpy as np

from speechlm.tokenizers.lexicon import SIL, UNITS, UNK_UNIT

# Defaults of the public reference recipe, in 50 Hz frames (20 ms).
PHONE_DURATION = (5.0, 2.5)
SIL_DURATION = (14.0, 7.0)
UNK_DURATION = (32.0, 11.0)


@dataclass(frozen=True)
class DurationTable:
    """Per-unit (mean, std) of the repeat count, as arrays indexed by unit id (``units``: default ``UNITS``;
    with the Kaldi inventory every ``SIL*`` unit takes the SIL duration and every ``SPN*`` the unknown's)."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def default(
        cls,
        phone: Tuple[float, float] = PHONE_DURATION,
        sil: Tuple[float, float] = SIL_DURATION,
        unk: Tuple[float, float] = UNK_DURATION,
        overrides: Dict[str, Tuple[float, float]] = None,
        units: Sequence[str] = UNITS,
    ) -> "DurationTable":
        mean = np.full(len(units), phone[0], dtype=np.float64)
        std = np.full(len(units), phone[1], dtype=np.float64)
        unit_id = {u: i for i, u in enumerate(units)}
        for i, u in enumerate(units):
            base = u.split("_", 1)[0]
            if base in (SIL, UNK_UNIT):
                mean[i], std[i] = sil if base == SIL else unk
        for unit, (m, s) in (overrides or {}).items():
            mean[unit_id[unit]], std[unit_id[unit]] = m, s
        return cls(mean, std)

    @classmethod
    def from_file(cls, path: str, units: Sequence[str] = UNITS, **defaults) -> "DurationTable":
        """Per-unit overrides from ``UNIT MEAN STD`` lines (``#`` comments allowed)."""
        overrides = {}
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                parts = line.split("#", 1)[0].split()
                if not parts:
                    continue
                if len(parts) != 3 or parts[0] not in units:
                    raise ValueError(
                        f"{path}:{lineno}: expected 'UNIT MEAN STD' with UNIT one of "
                        f"{' '.join(units)}; got {line.strip()!r}"
                    )
                try:
                    m, s = float(parts[1]), float(parts[2])
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: MEAN and STD must be numbers") from None
                if m <= 0 or s < 0:
                    raise ValueError(f"{path}:{lineno}: need MEAN > 0 and STD >= 0")
                overrides[parts[0]] = (m, s)
        return cls.default(overrides=overrides, units=units, **defaults)


def sample_repeats(units: np.ndarray, table: DurationTable, rng: np.random.Generator) -> np.ndarray:
    """Repeat counts max(1, round(N(mean[u], std[u]))) for unit ids ``units`` (shape (N,)) -> (N,) int64."""
    z = rng.standard_normal(len(units))
    reps = np.rint(table.mean[units] + table.std[units] * z).astype(np.int64)
    return np.maximum(reps, 1)


def upsample(units: np.ndarray, table: DurationTable, rng: np.random.Generator) -> np.ndarray:
    """Frame-level unit ids: each of ``units`` (shape (N,)) repeated by ``sample_repeats``."""
    return np.repeat(units, sample_repeats(units, table, rng))
