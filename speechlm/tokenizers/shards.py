"""Sharding shared by every sharded verb: shard ``rank`` of ``nshard`` writes ``{prefix}_{rank}_{nshard}.*``
(fairseq's HuBERT layout), and a merge step concatenates the shards in rank order.

Each shard also writes a sidecar ``{shard prefix}.shard.json`` (:func:`write_sidecar`): the verb, its
rank/nshard, a fingerprint of every input and model file (size + SHA-1 of its first and last MiB, so a
copy elsewhere matches and another file does not) and the options that change the output. A merge
(:func:`check_sidecars`, called by :func:`concat_shards`) refuses shards whose sidecars disagree, naming
the odd shard and what differs, so shards from another input, another K or other options never end up
in one file. The sidecar also records each output of the shard (``{shard prefix}.{ext}``: size, SHA-1 of
its ends and, for text, its line count) once they are complete; the merge refuses a shard whose files
no longer match its sidecar or whose line-aligned files (``.phn``/``.ltr``/``.km``) differ in length.

Writers hold :func:`shard_lock` while they write a shard, so a second process given the same ``--rank``
(a requeued Slurm task beside its predecessor) is refused instead of mixing its files with the first's;
every file goes through a temporary name unique to its process (:mod:`speechlm.atomic`).
"""
import contextlib
import errno
import hashlib
import json
import os
import shutil
from typing import Dict, Iterable, List, Optional, Tuple

from speechlm.atomic import atomic_write, ensure_dir, is_temp
from speechlm.errors import UserError, os_error

SIDECAR = ".shard.json"
LOCK = ".lock"
_FINGERPRINT_BYTES = 1 << 20
ALIGNED_EXTS = ("phn", "ltr", "km", "wrd")  # text outputs of one shard with one line per row each


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


def count_lines(path: str) -> int:
    n, last = 0, b"\n"
    with open(path, "rb") as f:
        for buf in iter(lambda: f.read(1 << 22), b""):
            n += buf.count(b"\n")
            last = buf[-1:]
    return n + (last != b"\n")


def shard_outputs(shard_prefix: str) -> Dict[str, dict]:
    """``{ext: {"size", "sha1"[, "lines"]}}`` of the finished files ``{shard_prefix}.{ext}`` (not the sidecar,
    the lock or temporary files)."""
    d, base = os.path.split(os.path.abspath(shard_prefix))
    out = {}
    for name in sorted(os.listdir(d)):
        if not name.startswith(base + ".") or is_temp(name) or name.endswith((SIDECAR, LOCK)):
            continue
        ext = name[len(base) + 1:]
        path = os.path.join(d, name)
        if "." in ext or not os.path.isfile(path):
            continue
        doc = fingerprint(path)
        if ext in ALIGNED_EXTS:
            doc["lines"] = count_lines(path)
        out[ext] = doc
    return out


@contextlib.contextmanager
def shard_lock(shard_prefix: str):
    """Hold ``{shard_prefix}.lock`` (``flock``) while a shard is written; a second writer of the same shard
    gets a ``UserError`` at once. The lock file is removed when the writer is done."""
    import fcntl

    path = shard_prefix + LOCK
    ensure_dir(os.path.dirname(os.path.abspath(path)))
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise os_error(e, path, "shard lock") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise os_error(e, path, "shard lock") from None
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            raise UserError(
                f"{path}: another process (pid {holder}) is writing this shard right now; two runs of the same "
                "--rank would mix their files. Let it finish (or stop it), then run this rank again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield path
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)  # before the lock is released: a waiter never locks a file about to vanish
    finally:
        os.close(fd)


def write_sidecar(shard_prefix: str, verb: str, rank: int, nshard: int, inputs: Dict[str, Optional[str]],
                  options: Dict[str, object]) -> str:
    """Write ``{shard_prefix}.shard.json``: the verb, rank/nshard, fingerprints of ``inputs`` (name -> file
    path, or None) and ``options`` (JSON values; file paths among them are fingerprinted too), and the
    fingerprints of the shard's finished outputs (:func:`shard_outputs`). Call it last, under
    :func:`shard_lock`."""
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
        "outputs": shard_outputs(shard_prefix),
    }
    path = shard_prefix + SIDECAR
    with atomic_write(path, what="shard sidecar") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
    return path


def check_outputs(shard_prefix: str, doc: dict, sidecar: str, hint: str) -> None:
    """The shard's files are the ones its sidecar recorded, and its line-aligned files agree in length."""
    recorded = doc.get("outputs")
    if recorded is None:  # a sidecar of an older version: nothing recorded to compare
        return
    for ext, want in recorded.items():
        path = f"{shard_prefix}.{ext}"
        if not os.path.isfile(path):
            raise UserError(f"cannot merge: {path} is missing but {sidecar} lists it; re-run that rank ({hint})")
        got = fingerprint(path)
        if (got["size"], got["sha1"]) != (want.get("size"), want.get("sha1")):
            raise UserError(
                f"cannot merge: {path} is not the file {sidecar} recorded ({got['size']} bytes, recorded "
                f"{want.get('size')}): it was rewritten after its rank finished (two runs of the same rank?); "
                f"re-run that rank alone ({hint})"
            )
    lines = {ext: r["lines"] for ext, r in recorded.items() if "lines" in r}
    if len(set(lines.values())) > 1:
        what = ", ".join(f"{shard_prefix}.{e}: {n}" for e, n in sorted(lines.items()))
        raise UserError(f"cannot merge: the line-aligned files of one shard differ in length ({what}); "
                        f"re-run that rank ({hint})")


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
        check_outputs(p, doc, path, hint)
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
        with atomic_write(f"{prefix}.{ext}", "wb", what="merged shards") as out:
            for p in parts:
                with open(f"{p}.{ext}", "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
