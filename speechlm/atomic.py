"""Atomic writers: an output appears complete under its final name, or not at all.

Every writer goes through a temporary file beside its target whose name is unique to the process and the
call (``{target}.tmp-{pid}-{random}``), so two processes writing the same output (two runs of one Slurm
rank, a requeued job beside its predecessor) never write into the same file; the data is flushed and
fsync'ed, then renamed onto the target (and the directory fsync'ed, so the rename survives a crash). On
any failure the temporary file is removed and the old target (if any) is left as it was. An ``OSError``
(read-only or full disk, a file where a directory should be) becomes a :class:`~speechlm.errors.UserError`
naming the path and what to do (:func:`speechlm.errors.os_error`).

- :func:`atomic_write`: ``with atomic_write(path) as f: f.write(...)`` (text or, ``mode="wb"``, bytes);
- :func:`atomic_path`: ``with atomic_path(path) as tmp: np.save(tmp, ...)`` for writers that want a path;
- :class:`AtomicGroup`: several files that only make sense together (a shard's ``.phn`` and ``.ltr``,
  ``binarize``'s ``.bin``/``.idx`` pairs): all written to temporary names, then renamed together, the
  ``marker`` (the file a reader checks for completeness) removed first and renamed last.
"""
import contextlib
import errno
import os
import secrets
from typing import Dict, List, Optional

from speechlm.errors import os_error

TMP_TAG = ".tmp-"


def temp_name(dst: str) -> str:
    """A temporary path beside ``dst``, unique to this process and call."""
    return f"{dst}{TMP_TAG}{os.getpid()}-{secrets.token_hex(4)}"


def is_temp(path: str) -> bool:
    return TMP_TAG in os.path.basename(path)


def fsync_file(path: str) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def fsync_dir(path: str) -> None:
    """Make a rename in ``path`` durable (best effort: not every file system lets a directory be fsync'ed)."""
    try:
        fd = os.open(path or ".", os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def ensure_dir(path: str, what: str = "output directory") -> None:
    """``os.makedirs(path, exist_ok=True)`` with a clean error (a file in the way, a read-only disk)."""
    try:
        os.makedirs(path or ".", exist_ok=True)
    except FileExistsError:  # a file where the directory should be
        raise os_error(NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path), path, what) from None
    except OSError as e:
        raise os_error(e, path, what) from None


@contextlib.contextmanager
def atomic_path(dst: str, what: str = "output"):
    """Yield a temporary path beside ``dst``; on success it is fsync'ed and renamed onto ``dst``."""
    ensure_dir(os.path.dirname(os.path.abspath(dst)))
    tmp = temp_name(dst)
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, dst)
        fsync_dir(os.path.dirname(os.path.abspath(dst)))
    except OSError as e:
        raise os_error(e, dst, what) from None
    finally:
        _remove(tmp)


@contextlib.contextmanager
def atomic_write(dst: str, mode: str = "w", encoding: Optional[str] = "utf-8", what: str = "output"):
    """``open(dst, mode)`` through a temporary file renamed onto ``dst`` when the block ends without error."""
    with atomic_path(dst, what) as tmp:
        try:
            f = open(tmp, mode, encoding=None if "b" in mode else encoding)
        except OSError as e:
            raise os_error(e, dst, what) from None
        with f:
            yield f
            f.flush()


class AtomicGroup:
    """Files written together and renamed together (see the module docstring).

    ::

        with AtomicGroup(marker=prefix + ".summary.json") as g:
            write_bin(g.path(prefix + ".bin")); ...
            with open(g.path(prefix + ".summary.json"), "w") as f: ...

    On success every temporary file is fsync'ed, the old marker removed, the others renamed onto their
    targets and the marker last: a reader that trusts the files only when the marker is there never
    sees a half-renamed set. On failure every temporary file is removed.
    """

    def __init__(self, marker: Optional[str] = None, what: str = "output"):
        self.marker, self.what = marker, what
        self.tmp: Dict[str, str] = {}

    def path(self, dst: str) -> str:
        if dst not in self.tmp:
            ensure_dir(os.path.dirname(os.path.abspath(dst)))
            self.tmp[dst] = temp_name(dst)
        return self.tmp[dst]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if isinstance(exc, OSError):  # a write failed (full disk): name the output, not a bare errno
                raise os_error(exc, next(iter(self.tmp), None) or self.marker or "", self.what) from None
            if exc_type is None:
                self._commit()
        except OSError as e:
            raise os_error(e, getattr(e, "filename", None) or next(iter(self.tmp), ""), self.what) from None
        finally:
            for t in self.tmp.values():
                _remove(t)
        return False

    def _commit(self) -> None:
        missing = [d for d, t in self.tmp.items() if not os.path.exists(t)]
        if missing:
            raise RuntimeError(f"AtomicGroup: nothing was written for {missing[0]}")
        for t in self.tmp.values():
            fsync_file(t)
        order: List[str] = [d for d in self.tmp if d != self.marker]
        if self.marker is not None:
            if os.path.lexists(self.marker):
                os.remove(self.marker)
                fsync_dir(os.path.dirname(os.path.abspath(self.marker)))
            if self.marker in self.tmp:
                order.append(self.marker)
        for d in order:
            os.replace(self.tmp[d], d)
        for d in {os.path.dirname(os.path.abspath(d)) for d in order}:
            fsync_dir(d)

