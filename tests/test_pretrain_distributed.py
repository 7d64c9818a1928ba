"""fairseq's multi-process trainer on CPU (gloo), and kill + restart from ``checkpoint_last.pt``.

Each training process runs the documented ``fairseq-hydra-train`` entry point through a small
driver that also records the utterance ids of every speech batch a rank trains on.
"""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_pretrain import REPO, parse_train_log, train_command, train_env, write_text_dir

pytestmark = pytest.mark.slow  # two- and one-process trainings through fairseq-hydra-train

DRIVER = r"""
import os, sys
import torch.distributed as dist
import speechlm
from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingTask

_train_step = SpeechLMPretrainingTask.train_step

def train_step(self, sample, *args, **kwargs):
    ignore_grad = kwargs.get("ignore_grad", args[4] if len(args) > 4 else False)
    if sample and not ignore_grad:
        rank = dist.get_rank() if dist.is_initialized() else 0
        with open(os.path.join(os.environ["IDS_DIR"], f"rank{rank}.txt"), "a") as f:
            f.write(" ".join(map(str, sample["speech"]["id"].tolist())) + "\n")
    return _train_step(self, sample, *args, **kwargs)

SpeechLMPretrainingTask.train_step = train_step
from fairseq_cli.hydra_train import cli_main

sys.argv = ["fairseq-hydra-train"] + sys.argv[1:]
cli_main()
"""


def driver_command(cmd):
    return [sys.executable, "-c", DRIVER, *cmd[1:]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def read_ids(path: Path):
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def text_dir(mini_corpus, tmp_path_factory):
    return write_text_dir(Path(mini_corpus), tmp_path_factory.mktemp("text"))


def test_two_cpu_ranks_with_gloo_train_on_different_batches(mini_corpus, text_dir, tmp_path):
    port = free_port()
    ids_dir = tmp_path / "ids"
    ids_dir.mkdir()
    procs = []
    for rank in (0, 1):
        cmd = train_command(
            mini_corpus, text_dir, tmp_path / "ckpt", "optimization.max_update=3",
            "common.log_interval=1", "dataset.validate_interval_updates=0", "dataset.disable_validation=true",
            "distributed_training.distributed_world_size=2",
            f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
            f"distributed_training.distributed_rank={rank}", "distributed_training.distributed_no_spawn=true",
            "distributed_training.device_id=0", "distributed_training.distributed_backend=gloo",
            "distributed_training.ddp_backend=legacy_ddp",
        )
        cmd[cmd.index(f"hydra.run.dir={tmp_path / 'ckpt'}/hydra")] = f"hydra.run.dir={tmp_path}/hydra{rank}"
        procs.append(subprocess.Popen(driver_command(cmd), cwd=REPO, env={**train_env(), "IDS_DIR": str(ids_dir)},
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=300)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    rows = parse_train_log(logs[0])
    assert rows and rows[-1]["num_updates"] == 3
    ids0, ids1 = read_ids(ids_dir / "rank0.txt"), read_ids(ids_dir / "rank1.txt")
    assert len(ids0) == len(ids1) == 3
    for a, b in zip(ids0, ids1):
        assert not set(a) & set(b), f"both ranks trained on utterances {set(a) & set(b)} in one step"
    # rank 0 logs the sum over both ranks: its sentence count covers both ranks' batches
    assert rows[0]["bsz"] == len(ids0[0]) + len(ids1[0])
    assert (tmp_path / "ckpt" / "checkpoint_last.pt").is_file()


def test_kill_and_restart_resumes_from_checkpoint_last_at_the_same_update(mini_corpus, text_dir, tmp_path):
    save = tmp_path / "ckpt"
    ids_dir = tmp_path / "ids"
    ids_dir.mkdir()
    cmd = train_command(mini_corpus, text_dir, save, "optimization.max_update=200", "common.log_interval=1",
                        "checkpoint.save_interval_updates=3", "dataset.disable_validation=true")
    env = {**train_env(), "IDS_DIR": str(ids_dir)}
    proc = subprocess.Popen(driver_command(cmd), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    last = save / "checkpoint_last.pt"
    deadline = time.time() + 300
    n_saved = None
    try:
        while time.time() < deadline and proc.poll() is None:
            time.sleep(0.5)
            if not last.exists():
                continue
            state = torch.load(last, weights_only=True)
            n_saved = state["optimizer_history"][-1]["num_updates"]
            if len(read_ids(ids_dir / "rank0.txt")) >= n_saved + 1:
                break
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a hard kill, as a pre-empted job gets
        proc.wait()
    assert n_saved is not None, "no checkpoint_last.pt before the deadline"
    before = read_ids(ids_dir / "rank0.txt")
    (ids_dir / "rank0.txt").rename(ids_dir / "killed.txt")

    state = torch.load(last, weights_only=True)
    n_saved = state["optimizer_history"][-1]["num_updates"]
    resume = subprocess.run(
        driver_command(train_command(mini_corpus, text_dir, save, f"optimization.max_update={n_saved + 2}",
                                     "common.log_interval=1", "checkpoint.save_interval_updates=3",
                                     "dataset.disable_validation=true")),
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    log = resume.stdout + resume.stderr
    assert resume.returncode == 0, log[-3000:]
    assert f"@ {n_saved} updates)" in log and "Loaded checkpoint" in log, log[-3000:]
    rows = parse_train_log(log)
    assert rows[0]["num_updates"] == n_saved + 1 and rows[-1]["num_updates"] == n_saved + 2
    after = read_ids(ids_dir / "rank0.txt")
    # the restarted run trains on the very batch the killed run took after its last checkpoint
    assert after[0] == before[n_saved]
