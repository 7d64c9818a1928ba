"""The console is for the user; framework chatter goes to the run's log file.

``SPEECHLM_LOG_FILE=PATH`` (set by a recipe or the demo, inherited by every process it starts) makes
``route()`` send every log record at INFO and above to PATH, and lets through to the console only
warnings and errors, the training progress lines (fairseq's progress bar: ``train_inner``, ``train``,
``valid`` stats) and speechlm's own messages. Without it nothing changes: a fairseq user sees fairseq's
usual output. ``route()`` runs in ``speechlm.register()`` (so inside ``fairseq-hydra-train``, once the
user dir loads) and in every ``speechlm`` verb (``speechlm.cli.main``).
"""
import functools
import logging
import logging.config
import os
import sys
import warnings
from typing import Optional

LOG_FILE_ENV = "SPEECHLM_LOG_FILE"
CONSOLE_LOGGERS = ("speechlm",)  # INFO records of these loggers stay on the console
# fairseq's progress bar logs its stats lines from this module, under the stats' tag as logger name
# (``train_inner``, ``train``, the validation subset's name)
PROGRESS_MODULE = "progress_bar"


class _ConsoleFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return (record.levelno >= logging.WARNING or record.name.startswith(CONSOLE_LOGGERS)
                or record.module == PROGRESS_MODULE)


def quiet_known_warnings() -> None:
    """Warnings that say nothing a user can act on. fairseq's data loader asks for pinned memory, which a
    CPU-only machine cannot give (torch then warns once per loader)."""
    warnings.filterwarnings("ignore", message="'pin_memory' argument is set as true but no accelerator",
                            category=UserWarning)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (pytest swaps it per test)."""

    def __init__(self):
        logging.Handler.__init__(self)

    @property
    def stream(self):
        return sys.stderr


def route(log_file: Optional[str] = None, console_format: str = "%(message)s") -> Optional[str]:
    """Set up logging for this process (idempotent); returns the log file in use, if any.

    ``log_file`` defaults to ``$SPEECHLM_LOG_FILE``. Without one, this is ``logging.basicConfig`` at INFO
    (nothing happens if logging is already configured). With one, every record goes to the file and
    the console handlers of the root logger (a new one on stderr if there is none) get the filter.
    """
    log_file = log_file or os.environ.get(LOG_FILE_ENV) or None
    root = logging.getLogger()
    if getattr(root, "_speechlm_routed", None) == (log_file or ""):
        return log_file
    root._speechlm_routed = log_file or ""
    if log_file:
        _reroute_after_dict_config(log_file, console_format)
    if not log_file:
        if not root.handlers:
            console = _StderrHandler()
            console.setFormatter(logging.Formatter(console_format))
            root.addHandler(console)
            root.setLevel(logging.INFO)
        return None
    if root.level > logging.INFO or root.level == logging.NOTSET:
        root.setLevel(logging.INFO)
    consoles = [h for h in root.handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    if not consoles:
        console = _StderrHandler()
        console.setFormatter(logging.Formatter(console_format))
        root.addHandler(console)
        consoles = [console]
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    fh = logging.FileHandler(log_file, encoding="utf-8")
    fh.setFormatter(logging.Formatter("%(asctime)s | %(levelname)s | %(name)s | %(message)s"))
    root.addHandler(fh)
    for h in consoles:
        h.addFilter(_ConsoleFilter())
    logging.captureWarnings(True)  # warnings then reach the file too (and the console: WARNING)
    return log_file


def _reroute_after_dict_config(log_file: str, console_format: str) -> None:
    """fairseq's ``train.main`` re-applies hydra's logging config right after it loads the user dir
    (``logging.config.dictConfig(cfg.job_logging_cfg)``), which drops the handlers set up here; so, with a
    log file only, a new logging config is routed again once it is applied."""
    original = logging.config.dictConfig
    if getattr(original, "_speechlm_reroutes", False):
        return

    @functools.wraps(original)
    def dict_config(config):
        original(config)
        logging.getLogger()._speechlm_routed = None
        route(log_file, console_format)

    dict_config._speechlm_reroutes = True
    logging.config.dictConfig = dict_config
