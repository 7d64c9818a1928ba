"""A real one-node Slurm cluster (scripts/slurm_local.sh: Debian's slurm-wlm + munge) running the Slurm paths:
the LibriSpeech recipe's --slurm job arrays, a 2-task ``srun`` pre-training through fairseq's own Slurm
rendezvous (gloo on CPU), and hydra's submitit launcher.

The cluster is started once per session (state under pytest's temp dir, free ports) and stopped after.
Without the Slurm daemons installed (scripts/setup.sh installs them as root) these tests are skipped.
"""
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from speechlm.cli.main import main as speechlm_main
from tests.conftest import MINI_CORPUS_HOURS, MINI_CORPUS_SEED
from tests.test_half_precision import binarized_text
from tests.test_pretrain import parse_train_log

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = REPO / "scripts" / "slurm_local.sh"
# small jobs: one CPU each, so a 2-CPU node runs the two tasks of an array side by side
SBATCH_OPTS = "--cpus-per-task=1 --mem=1G --time=0:30:00"
# the tiny pre-training of examples/mini with short crops and small batches: seconds per update
TINY = ["common.log_interval=1", "dataset.validate_interval_updates=0", "dataset.disable_validation=true",
        "dataset.max_tokens=160000", "task.max_sample_size=48000"]


def free_port_pair() -> int:
    """A port P with P and P + 1 free (slurmctld, slurmd)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 65000:
            with socket.socket() as s2:
                try:
                    s2.bind(("127.0.0.1", port + 1))
                except OSError:
                    continue
            return port
    raise RuntimeError("no two consecutive free ports")


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """``env`` with SLURM_CONF pointing at a running one-node cluster; stopped at the end of the session."""
    missing = [t for t in ("munged", "slurmctld", "slurmd", "srun", "sbatch") if shutil.which(t) is None]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)}): run scripts/setup.sh as root")
    state = tmp_path_factory.mktemp("slurm_local")
    env = {**os.environ, "SLURM_LOCAL_DIR": str(state / "cluster"), "SLURM_LOCAL_PORT": str(free_port_pair())}
    start = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr[-3000:]
    conf = subprocess.run(["bash", str(SCRIPT), "conf"], env=env, capture_output=True, text=True).stdout.strip()
    assert f"export SLURM_CONF={conf}" in start.stdout
    env = {**env, "SLURM_CONF": conf, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", "PYTHONPATH": str(REPO)}
    again = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "already running" in again.stderr, again.stderr  # idempotent
    yield env
    stop = subprocess.run(["bash", str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    assert not (state / "cluster").exists()


def test_cluster_runs_batch_jobs_and_arrays(slurm, tmp_path):
    out = subprocess.run(["sbatch", "--wait", "--array=0-2", f"--output={tmp_path}/a-%A_%a.out",
                          "--wrap=echo task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT"], env=slurm,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = sorted(p.read_text().strip() for p in tmp_path.glob("a-*.out"))
    assert lines == [f"task {i} of 3" for i in range(3)]


def test_librispeech_recipe_slurm_arrays_write_what_the_unsharded_recipe_writes(slurm, mini_corpus, tmp_path):
    """run.sh stages 1-3 (manifests, transcripts, LM text -> phoneme units as a 2-task job array, binarized):
    through the real cluster, the merged and binarized outputs are byte-identical to one local run's."""
    tree = tmp_path / "ls"
    shutil.copytree(mini_corpus, tree / "mini")
    assert speechlm_main(["corpus", "mini", str(tree), "--layout", "librispeech", "--hours",
                          str(MINI_CORPUS_HOURS), "--seed", str(MINI_CORPUS_SEED)]) == 0

    def recipe(exp, *extra):
        cmd = ["bash", str(REPO / "examples/librispeech/run.sh"), "--librispeech", str(tree), "--lm-text",
               str(tree / "librispeech-lm-norm.txt"), "--lexicon", str(tree / "librispeech-lexicon.txt"),
               "--exp", str(exp), "--size", "tiny", "--lm-lines", "3000", "--stop-stage", "3", *extra]
        env = {**slurm, "PY": sys.executable, "SBATCH_OPTS": SBATCH_OPTS}
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
        return res.stdout

    local, cluster = tmp_path / "local", tmp_path / "slurm"
    recipe(local)
    out = recipe(cluster, "--slurm", "--nshard", "2")
    assert "phonemize: Slurm array of 2 tasks" in out
    logs = sorted(p.name for p in (cluster / "slurm").glob("phonemize-*.log"))
    assert len(logs) == 2 and logs[0].endswith("_0.log") and logs[1].endswith("_1.log"), logs
    assert (cluster / "text" / "lm_1_2.phn").is_file(), "the phonemize step was not sharded"
    for rel in ("data/train_960.tsv", "data/dev_clean.ltr", "text/lm.phn", "text/lm.ltr",
                "text_bin/train.phn-ltr.phn.bin", "text_bin/train.phn-ltr.phn.idx",
                "text_bin/train.phn-ltr.ltr.bin"):
        assert (cluster / rel).read_bytes() == (local / rel).read_bytes(), f"{rel}: 2 Slurm shards != 1 local run"


@pytest.fixture(scope="module")
def text_dir(mini_corpus, tmp_path_factory):
    return binarized_text(Path(mini_corpus), tmp_path_factory.mktemp("slurm_text"))


def pretrain_args(corpus, text, save, *overrides):
    return ["--config-dir", str(REPO / "examples/mini/config/pretrain"), "--config-name", "speechlm_tiny",
            f"task.data={corpus}", f"task.text_data={text}", f"common.user_dir={REPO / 'speechlm'}",
            f"checkpoint.save_dir={save}", "checkpoint.no_save=true", *TINY, *overrides]


def test_srun_two_tasks_train_as_one_process_with_update_freq_2(slurm, mini_corpus, text_dir, tmp_path):
    """``srun -n 2 fairseq-hydra-train ... distributed_world_size=2 distributed_port=P``: fairseq reads the
    node list, rank and world size from Slurm (scontrol show hostnames, SLURM_PROCID, SLURM_NTASKS) and the two
    ranks rendezvous with gloo; their losses equal one process's with update_freq 2 (same batches, same draws).
    SLURM_LOCALID=0: every CPU task's device is the CPU (fairseq would call torch.cuda.set_device(LOCALID))."""
    updates = 3
    one = subprocess.run([str(BIN / "fairseq-hydra-train"), *pretrain_args(
        mini_corpus, text_dir, tmp_path / "one", f"optimization.max_update={updates}", "optimization.update_freq=[2]",
        f"hydra.run.dir={tmp_path}/one_hydra")], env=slurm, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert one.returncode == 0, (one.stdout + one.stderr)[-3000:]
    port = free_port_pair()
    train = " ".join([str(BIN / "fairseq-hydra-train"), *pretrain_args(
        mini_corpus, text_dir, tmp_path / "two", f"optimization.max_update={updates}",
        "distributed_training.distributed_world_size=2", f"distributed_training.distributed_port={port}",
        "distributed_training.distributed_backend=gloo", f"hydra.run.dir={tmp_path}/two_hydra$SLURM_PROCID")])
    two = subprocess.run(["srun", "--ntasks=2", "--cpus-per-task=1", "--label", "bash", "-c",
                          f"SLURM_LOCALID=0 exec {train}"], env=slurm, capture_output=True, text=True, timeout=900,
                         cwd=REPO)
    log = two.stdout + two.stderr
    assert two.returncode == 0, log[-3000:]
    assert "0: " in log and "Rank 1, device_id: 0" in log and "distributed init (rank 1)" in log, log[-3000:]
    rank0 = "\n".join(line[3:] for line in log.splitlines() if line.startswith("0: "))
    rows_two, rows_one = parse_train_log(rank0), parse_train_log(one.stdout + one.stderr)
    assert [r["num_updates"] for r in rows_two] == [r["num_updates"] for r in rows_one] == list(range(1, updates + 1))
    for a, b in zip(rows_one, rows_two):
        assert b["bsz"] == a["bsz"] and b["sample_size"] == a["sample_size"]
        for key in ("loss", "umlm_loss_0", "umlm_loss_1", "uctc_loss"):
            assert b[key] == pytest.approx(a[key], rel=1e-3), (key, a, b)


def test_hydra_submitit_launcher_submits_a_run(slurm, mini_corpus, text_dir, tmp_path):
    """``fairseq-hydra-train -m ... +slurm=local_cpu``: hydra's submitit launcher submits the run as a Slurm
    job, waits for it, and the job trains (its log under the sweep dir's submitit/JOBID/)."""
    sweep = tmp_path / "sweep"
    res = subprocess.run([str(BIN / "fairseq-hydra-train"), "-m", *pretrain_args(
        mini_corpus, text_dir, tmp_path / "ckpt", "optimization.max_update=2", "hydra.searchpath=[file://examples]",
        "+slurm=local_cpu", f"hydra.sweep.dir={sweep}")], env=slurm, capture_output=True, text=True, timeout=900,
        cwd=REPO)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    job_logs = list((sweep / "submitit").glob("*/*_0_log.out"))
    assert len(job_logs) == 1, list(sweep.rglob("*"))
    rows = parse_train_log(job_logs[0].read_text() + job_logs[0].with_suffix(".err").read_text())
    assert [r["num_updates"] for r in rows] == [1, 2]
    job_id = job_logs[0].parent.name
    assert job_id.isdigit() and (job_logs[0].parent / f"{job_id}_0_result.pkl").is_file()
