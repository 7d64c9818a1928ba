"""SPEECHLM_LOG_FILE: framework chatter to the file, what the user needs on the console."""
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# speechlm/logs.py is loaded on its own: ``import speechlm`` would pay for fairseq in every run
CODE = """
import importlib.util, logging, logging.config, sys, warnings
spec = importlib.util.spec_from_file_location("speechlm_logs", sys.argv[1])
logs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(logs)
logs.route()
logs.quiet_known_warnings()
# what fairseq's train.main does right after loading the user dir: hydra's logging config again
logging.config.dictConfig({"version": 1, "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}},
    "root": {"level": "INFO", "handlers": ["console"]}})
logging.getLogger("fairseq.trainer").info("CHATTER model has 1234 parameters")
progress = logging.getLogger("train_inner")  # what fairseq's progress bar (progress_bar.py) logs under
progress.handle(progress.makeRecord("train_inner", logging.INFO, "/x/fairseq/logging/progress_bar.py", 1,
                                    "PROGRESS epoch 001: loss 3.2", None, None))
logging.getLogger("speechlm.cli.kmeans").info("OURS wrote 10 units")
logging.getLogger("fairseq.tasks").warning("WARNED no such split")
warnings.warn("'pin_memory' argument is set as true but no accelerator is found, then device pinned memory won't be used.")
warnings.warn("USERWARNING something the user should see")
"""


def _run(env_extra):
    env = {k: v for k, v in os.environ.items() if k != "SPEECHLM_LOG_FILE"}
    return subprocess.run([sys.executable, "-c", CODE, str(REPO / "speechlm" / "logs.py")], capture_output=True,
                          text=True, env={**env, **env_extra}, timeout=120)


def test_log_file_takes_the_chatter_and_the_console_keeps_progress_and_warnings(tmp_path):
    log = tmp_path / "run" / "fairseq.log"
    res = _run({"SPEECHLM_LOG_FILE": str(log)})
    assert res.returncode == 0, res.stderr
    console = res.stdout + res.stderr
    for kept in ("PROGRESS", "OURS", "WARNED", "USERWARNING"):
        assert kept in console
    assert "CHATTER" not in console and "pin_memory" not in console
    text = log.read_text()
    for word in ("CHATTER", "PROGRESS", "OURS", "WARNED", "USERWARNING"):
        assert word in text


def test_without_a_log_file_everything_stays_on_the_console():
    res = _run({})
    assert res.returncode == 0, res.stderr
    console = res.stdout + res.stderr
    assert "CHATTER" in console and "PROGRESS" in console and "pin_memory" not in console
