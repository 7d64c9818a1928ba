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
"""
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


def debug() -> bool:
    """True when ``SPEECHLM_DEBUG`` asks for tracebacks."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def format_error(e: BaseException, prog: str = "speechlm") -> str:
    return f"{prog}: error: {e}"


def _excepthook(exc_type, exc, tb, _previous=sys.excepthook):
    if issubclass(exc_type, UserError) and not debug():
        sys.stderr.write(format_error(exc, os.path.basename(sys.argv[0] or "speechlm")) + "\n")
        return
    _previous(exc_type, exc, tb)


def install() -> None:
    """Print uncaught UserErrors without a traceback (idempotent; called by ``import speechlm``)."""
    if debug():
        os.environ.setdefault("HYDRA_FULL_ERROR", "1")
        return
    if sys.excepthook is not _excepthook and getattr(sys.excepthook, "__name__", "") != "_excepthook":
        sys.excepthook = _excepthook
