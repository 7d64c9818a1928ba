"""A real SIGTERM (what Slurm sends before it kills or requeues a job) during fairseq-hydra-train: the update
in progress finishes, checkpoint_last.pt is saved, Slurm is asked for a requeue, and the next run resumes at
the same update (issue 27). The tiny LM of tests/test_checkpoint.py keeps it short."""
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from tests.test_checkpoint import LM_CONFIG

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture()
def lm_dir(tmp_path, mini_corpus):
    lines = (mini_corpus / "unpaired.wrd").read_text().splitlines()[:400]
    (tmp_path / "train.txt").write_text("\n".join(lines[:350]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(lines[350:]) + "\n")
    subprocess.run([str(BIN / "fairseq-preprocess"), "--only-source", "--trainpref", "train.txt", "--validpref",
                    "valid.txt", "--destdir", "bin", "--workers", "1"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "lm.yaml").write_text(LM_CONFIG)
    # `scontrol` as Slurm's would be called: this one records its arguments (no Slurm daemon in the tests)
    shim = tmp_path / "slurm_bin"
    shim.mkdir()
    (shim / "scontrol").write_text(f"#!/bin/sh\necho \"$@\" > {tmp_path / 'scontrol.args'}\n")
    (shim / "scontrol").chmod(0o755)
    return tmp_path


def _cmd(work, max_update):
    return [str(BIN / "fairseq-hydra-train"), "--config-dir", str(work), "--config-name", "lm",
            f"task.data={work / 'bin'}", f"checkpoint.save_dir={work / 'ckpt'}", f"hydra.run.dir={work / 'hydra'}",
            f"optimization.max_update={max_update}", f"common.user_dir={REPO / 'speechlm'}",
            "checkpoint.save_interval_updates=0", "checkpoint.save_interval=1000", "dataset.disable_validation=true",
            "common.log_interval=1"]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_checkpoint_last_requeues_and_resumes_at_the_same_update(lm_dir, sig):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SLURM_JOB_ID": "4242",
           "PATH": f"{lm_dir / 'slurm_bin'}{os.pathsep}{os.environ['PATH']}"}
    p = subprocess.Popen(_cmd(lm_dir, 100000), cwd=lm_dir, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    out, sent = [], threading.Event()

    def reader():
        for line in p.stdout:
            out.append(line)
            m = re.search(r"num_updates=(\d+)", line)
            if m and int(m.group(1)) >= 7 and not sent.is_set():
                p.send_signal(sig)
                sent.set()

    t = threading.Thread(target=reader)
    t.start()
    rc = p.wait(timeout=600)
    t.join()
    log = "".join(out)
    assert sent.is_set(), log[-3000:]
    assert rc == 128 + sig, log[-3000:]
    m = re.search(r"saving \S+checkpoint_last.pt at update (\d+) and stopping", log)
    assert m, log[-3000:]
    stopped = int(m.group(1))
    assert stopped >= 7
    assert "Traceback" not in log
    state = torch.load(lm_dir / "ckpt" / "checkpoint_last.pt", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == stopped
    assert (lm_dir / "scontrol.args").read_text().split() == ["requeue", "4242"]
    assert not [f for f in os.listdir(lm_dir / "ckpt") if ".tmp" in f]

    # the requeued run: the same command; it continues at the update it stopped at
    res = subprocess.run(_cmd(lm_dir, stopped + 3), cwd=lm_dir, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    log2 = res.stdout + res.stderr
    assert res.returncode == 0, log2[-3000:]
    assert re.search(rf"Loaded checkpoint \S+checkpoint_last.pt \(epoch \d+ @ {stopped} updates\)", log2), log2[-3000:]
    first = min(int(x) for x in re.findall(r"num_updates=(\d+)", log2))
    assert first == stopped + 1, log2[-3000:]
    assert f"num_updates: {stopped + 3} >= max_update: {stopped + 3}" in log2
