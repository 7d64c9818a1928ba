"""Sharding shared by every sharded verb: shard ``rank`` of ``nshard`` writes ``{prefix}_{rank}_{nshard}.*``
(fairseq's HuBERT layout), and a merge step concatenates the shards in rank order."""
import os
import shutil
from typing import Iterable, List, Tuple


def shard_range(n: int, nshard: int, rank: int) -> Tuple[int, int]:
    """Rows ``[start, end)`` of shard ``rank`` of ``nshard`` (contiguous, as fairseq's HuBERT scripts)."""
    if nshard < 1 or not 0 <= rank < nshard:
        raise ValueError(f"need 0 <= rank < nshard, got rank={rank} nshard={nshard}")
    return rank * n // nshard, (rank + 1) * n // nshard


def shard_prefixes(prefix: str, nshard: int) -> List[str]:
    return [f"{prefix}_{r}_{nshard}" for r in range(nshard)]


def check_shards(paths: List[str], hint: str) -> None:
    """Raise ``FileNotFoundError`` naming the first unfinished shard and what to run."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise FileNotFoundError(
            f"cannot merge: {len(missing)} of {len(paths)} shards are missing, e.g. {missing[0]}; {hint}"
        )


def concat_shards(prefix: str, nshard: int, exts: Iterable[str], hint: str) -> None:
    """Concatenate ``{prefix}_{r}_{nshard}.{ext}`` into ``{prefix}.{ext}`` for each ext, atomically."""
    exts = list(exts)
    parts = shard_prefixes(prefix, nshard)
    check_shards([f"{p}.{ext}" for p in parts for ext in exts], hint)
    for ext in exts:
        with open(f"{prefix}.{ext}.tmp", "wb") as out:
            for p in parts:
                with open(f"{p}.{ext}", "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        os.replace(f"{prefix}.{ext}.tmp", f"{prefix}.{ext}")
