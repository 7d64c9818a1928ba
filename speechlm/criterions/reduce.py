"""What the criterions' ``reduce_metrics`` share: sums over the workers' logging outputs, and means per sample.

A logging output holds flat sums over its batch (``loss``, ``correct``, ...) and ``sample_size``; fairseq
hands ``reduce_metrics`` the list of them (one per worker and accumulated batch).
"""
from typing import Dict, List, Optional, Sequence

from fairseq import metrics


def total(logging_outputs: List[Dict], key: str) -> float:
    """The sum of ``key`` over ``logging_outputs`` (0 where a worker did not log it)."""
    return sum(log.get(key, 0) for log in logging_outputs)


def log_means_per_sample(logging_outputs: List[Dict], means: Sequence[str] = ("loss",),
                         percents: Optional[Dict[str, str]] = None) -> None:
    """Log ``total(key) / total(sample_size)`` of each key of ``means`` (4 decimals) and, for each
    ``name: key`` of ``percents``, ``100 * total(key) / total(sample_size)`` as ``name`` (2 decimals);
    all weighted by the sample size in fairseq's running means."""
    n = max(total(logging_outputs, "sample_size"), 1)
    for key in means:
        metrics.log_scalar(key, total(logging_outputs, key) / n, n, round=4)
    for name, key in (percents or {}).items():
        metrics.log_scalar(name, 100.0 * total(logging_outputs, key) / n, n, round=2)
