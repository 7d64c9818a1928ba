"""Sharding shared by every sharded verb: shard ``rank`` of ``nshard`` writes ``{prefix}_{rank}_{nshard}.*``
(fairseq's HuBERT layout), and a merge step concatenates the shards in rank order.

Each shard also writes a sidecar ``{shard prefix}.shard.json`` (:func:`write_sidecar`): the verb, its
rank/nshard, a fingerprint of every input and model file (size + SHA-1 of its first and last MiB, so a
copy elsewhere matches and another file does not) and the options that change the output. A merge
(:func:`check_sidecars`, called by :func:`concat_shards`) refuses shards whose sidecars disagree, naming
the odd shard and what differs, so shards from another input, another K or other options never end up
in one file.
"""
import hashlib
import json
import os
import shutil
from typing import Dict, Iterable, List, Optional, Tuple

from speechlm.errors import UserError

SIDECAR = ".shard.json"
_FINGERPRINT_BYTES = 1 << 20


def shard_range(n: int, nshard: int, rank: int) -> Tuple[int, int]:
    """Rows ``[start, end)`` of shard ``rank`` of ``nshard`` (contiguous, as fairseq's HuBERT scripts)."""
    if nshard < 1 or not 0 <= rank < nshard:
        raise ValueError(f"need 0 <= rank < nshard, got rank={rank} nshard={nshard}")
    return rank * n // nshard, (rank + 1) * n // nshard


def shard_prefixes(prefix: str, nshard: int) -> List[str]:
    return [f"{prefix}_{r}_{nshard}" for r in range(nshard)]


def fingerprint(path: str) -> Dict[str, object]:
    """``{"size", "sha1"}`` of a file: its size and a SHA-1 of its first and last MiB (cheap on GBs)."""
    size = os.path.getsize(path)
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(_FINGERPRINT_BYTES))
        if size > 2 * _FINGERPRINT_BYTES:
            f.seek(size - _FINGERPRINT_BYTES)
        h.update(f.read(_FINGERPRINT_BYTES))
    return {"size": size, "sha1": h.hexdigest()}


def write_sidecar(shard_prefix: str, verb: str, rank: int, nshard: int, inputs: Dict[str, Optional[str]],
                  options: Dict[str, object]) -> str:
    """Write ``{shard_prefix}.shard.json``: the verb, rank/nshard, fingerprints of ``inputs`` (name -> file
    path, or None) and ``options`` (JSON values; file paths among them are fingerprinted too)."""
    def value(v):
        if isinstance(v, str) and os.path.isfile(v):
            return fingerprint(v)
        if isinstance(v, (list, tuple)):
            return [value(x) for x in v]
        return v

    doc = {
        "verb": verb, "rank": rank, "nshard": nshard,
        "inputs": {k: (fingerprint(v) if v else None) for k, v in inputs.items()},
        "options": {k: value(v) for k, v in sorted(options.items())},
    }
    path = shard_prefix + SIDECAR
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def check_sidecars(prefix: str, nshard: int, hint: str) -> None:
    """Every shard ``{prefix}_{r}_{nshard}`` has a sidecar, for its own rank, agreeing with rank 0's on the
    verb, inputs and options; else ``UserError`` naming the odd shard and the first difference."""
    docs = []
    for r, p in enumerate(shard_prefixes(prefix, nshard)):
        path = p + SIDECAR
        if not os.path.isfile(path):
            raise UserError(
                f"cannot merge: {path} is missing, so nothing says which input and options shard {r} came "
                f"from (written by an older version, or the rank did not finish); {hint}"
            )
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        if (doc.get("rank"), doc.get("nshard")) != (r, nshard):
            raise UserError(f"cannot merge: {path} says it is shard {doc.get('rank')} of {doc.get('nshard')}, "
                            f"not {r} of {nshard}; {hint}")
        docs.append((path, doc))
    ref_path, ref = docs[0]
    for path, doc in docs[1:]:
        for part in ("verb", "inputs", "options"):
            a, b = ref.get(part), doc.get(part)
            if a == b:
                continue
            if isinstance(a, dict) and isinstance(b, dict):
                key = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                what = f"{part[:-1] if part.endswith('s') else part} {key!r}: {b.get(key)} vs {a.get(key)}"
            else:
                what = f"{part}: {b} vs {a}"
            raise UserError(
                f"cannot merge: {path} does not match {ref_path} ({what}); every shard must come from the "
                f"same input, model and options: re-run that rank with the others' settings ({hint})"
            )


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
    check_sidecars(prefix, nshard, hint)
    for ext in exts:
        with open(f"{prefix}.{ext}.tmp", "wb") as out:
            for p in parts:
                with open(f"{p}.{ext}", "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        os.replace(f"{prefix}.{ext}.tmp", f"{prefix}.{ext}")
