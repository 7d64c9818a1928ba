"""One error path for mistakes in the user's input (a bad file, a wrong checkpoint, a bad option).

Raise :class:`UserError` with a message that names the file (and line, or utterance) and says what to
do. Every entry point then shows that message alone, without a traceback, and exits with status 1:

- ``speechlm <verb>``: :func:`speechlm.cli.main.main` catches it;
- ``fairseq-hydra-train`` / ``fairseq-generate`` (the plugin is imported inside fairseq's ``main()``):
  ``UserError`` is a hydra ``CompactHydraException``, which hydra prints as its message only, and
  ``import speechlm`` installs a ``sys.excepthook`` that does the same for the argparse entry points.

``SPEECHLM_DEBUG=1`` shows the full traceback everywhere (it also sets ``HYDRA_FULL_ERROR=1``).

``UserError`` is a ``ValueError`` (and :class:`UserFileNotFoundError` a ``FileNotFoundError``), so
code that caught the built-in exceptions still does.

:func:`os_error` turns an ``OSError`` (a read-only or full disk, a file where a directory should be, no
permission) into a ``UserError`` naming the path and what to do; ``speechlm <verb>`` and training
(:func:`install`, and the wrapped training loop in ``speechlm.preemption``) show it the same way.
"""
import errno
import os
import sys

try:  # hydra prints a CompactHydraException as its message only (no traceback)
    from hydra.errors import CompactHydraException as _Compact
except ImportError:  # pragma: no cover - hydra comes with fairseq
    class _Compact(Exception):
        pass

DEBUG_ENV = "SPEECHLM_DEBUG"


class UserError(_Compact, ValueError):
    """Bad input from the user. The message names the file/line (or option) and the fix."""


class UserFileNotFoundError(UserError, FileNotFoundError):
    """A file the user named (or a manifest points at) does not exist."""


class UserOSError(UserError, OSError):
    """An ``OSError`` the user can fix (disk full, read-only, not a directory); ``errno`` is kept."""

    def __init__(self, message: str, errno_: int = 0):
        UserError.__init__(self, message)
        self.errno = errno_

    def __str__(self):
        return self.args[0]


_OS_HINTS = {
    errno.ENOSPC: ("no space left on the device", "free space there or give an output directory on another disk; "
                   "nothing half-written was kept"),
    errno.EDQUOT: ("disk quota exceeded", "free space within your quota or write elsewhere"),
    errno.EROFS: ("read-only file system", "give an output directory on a writable file system"),
    errno.EACCES: ("permission denied", "give a path you may write (or read), or fix its permissions"),
    errno.EPERM: ("operation not permitted", "give a path you may write (or read), or fix its permissions"),
    errno.ENOTDIR: ("a part of this path is a file, not a directory", "move that file away or choose another path"),
    errno.EISDIR: ("is a directory", "give a file name, not a directory"),
    errno.ENOENT: ("no such file or directory", "check the path (a typo, or a step that has not run yet?)"),
    errno.EFBIG: ("file too large for this file system or process limit (ulimit -f)",
                  "raise the limit or write to another file system"),
    errno.EIO: ("input/output error", "the disk or network file system failed: check it and run again"),
    errno.EMFILE: ("too many open files", "raise the limit (ulimit -n) or use fewer workers"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter path"),
}


def os_error(e: OSError, path=None, what: str = "file") -> "UserOSError":
    """A ``UserError`` for an ``OSError``: which path (``e.filename`` or ``path``), what went wrong, what to do."""
    if isinstance(e, UserError):
        return e
    where = e.filename if getattr(e, "filename", None) else path
    what_failed, todo = _OS_HINTS.get(e.errno, (e.strerror or str(e), "check the path and the disk, then run again"))
    msg = f"{where}: {what_failed} (while writing or reading this {what}); {todo}"
    return UserOSError(msg, e.errno or 0)


def user_facing(e: BaseException) -> bool:
    """True for errors shown as a message alone: ``UserError``s and the ``OSError``s :func:`os_error` knows."""
    return isinstance(e, UserError) or (isinstance(e, OSError) and e.errno in _OS_HINTS)


def message(e: BaseException) -> str:
    return str(os_error(e) if isinstance(e, OSError) and not isinstance(e, UserError) else e)


def debug() -> bool:
    """True when ``SPEECHLM_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def format_error(e: BaseException, prog: str = "speechlm") -> str:
    return f"{prog}: error: {e}"


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    if exc is not None and user_facing(exc) and not debug():
        sys.stderr.write(format_error(message(exc), os.path.basename(sys.argv[0] or "speechlm")) + "\n")
        return
    _previous(exc_type, exc, tb)


def install() -> None:
    """Print uncaught UserErrors without a traceback (idempotent; called by ``import speechlm``)."""
    if debug():
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
        return
    if sys.excepthook is not _excepthook and getattr(sys.excepthook, "__name__", "") != "_excepthook":
        sys.excepthook = _excepthook
