"""scripts/slurm: the array + merge chains, submitted to a stand-in `sbatch`, then run in submission order."""
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # whole Slurm chains: phonemize/binarize and features/k-means end to end

REPO = Path(__file__).resolve().parents[1]

# Records each submission (one JSON line) and prints a job id; the test then runs the jobs in order.
FAKE_SBATCH = r'''#!/usr/bin/env python3
import json, os, sys
with open(os.environ["FAKE_SBATCH_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
print(1000 + sum(1 for _ in open(os.environ["FAKE_SBATCH_LOG"])))
'''


def run_jobs(log_path):
    """Run the recorded `--wrap` commands in submission order, each array index in turn, in this process
    (``$SPEECHLM`` is ``speechlm``: the console script a user has)."""
    from speechlm.cli.main import main as speechlm_main

    jobs = [json.loads(x) for x in log_path.read_text().splitlines()]
    for args in jobs:
        wrap = next(a.split("=", 1)[1] for a in args if a.startswith("--wrap="))
        array = next((a.split("=", 1)[1] for a in args if a.startswith("--array=")), "0-0")
        first, last = (int(x) for x in array.split("-"))
        for i in range(first, last + 1):
            cmd = wrap.replace("$SLURM_ARRAY_TASK_ID", str(i)).replace("${SLURM_CPUS_PER_TASK:-1}", "1")
            argv = shlex.split(cmd)
            assert argv[0] == "speechlm", cmd
            assert speechlm_main(argv[1:]) == 0, cmd
    return jobs


def test_phonemize_array_merge_binarize_chain(mini_corpus, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    text = tmp_path / "lm.txt"
    text.write_text("".join(line + "\n" for line in (mini_corpus / "unpaired.wrd").read_text().splitlines()[:2500]))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(tmp_path / "jobs"),
           "SPEECHLM": "speechlm", "LOGDIR": str(tmp_path / "logs")}
    proc = subprocess.run(["bash", str(REPO / "scripts/slurm/phonemize.sh"), str(text), str(tmp_path / "out/lm"),
                           "3", str(mini_corpus), str(tmp_path / "textbin")], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "phonemize array 1001 -> merge 1002 -> binarize 1003" in proc.stdout
    jobs = run_jobs(tmp_path / "jobs")
    assert "--array=0-2" in jobs[0] and "--dependency=afterok:1001" in jobs[1]
    assert "--dependency=afterok:1002" in jobs[2]
    # the array + merge gives what one unsharded run gives
    from speechlm.cli.main import main as speechlm_main

    assert speechlm_main(["phonemize", str(text), "--out-prefix", str(tmp_path / "one")]) == 0
    for ext in ("phn", "ltr"):
        assert (tmp_path / "out" / f"lm.{ext}").read_bytes() == (tmp_path / f"one.{ext}").read_bytes()
    assert (tmp_path / "textbin" / "train.phn-ltr.phn.idx").is_file()
    assert (tmp_path / "textbin" / "train.phn-ltr.ltr.bin").is_file()


def test_hidden_units_chain(mini_corpus, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FAKE_SBATCH_LOG": str(tmp_path / "jobs"),
           "SPEECHLM": "speechlm", "LOGDIR": str(tmp_path / "logs"),
           "KMEANS_OPTS": "-k 8 --percent 0.5 --n-init 1 --max-iter 10"}
    proc = subprocess.run(["bash", str(REPO / "scripts/slurm/hidden_units.sh"), str(mini_corpus), str(tmp_path / "feat"),
                           str(tmp_path / "lab"), "2", "valid", "valid", "test"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = run_jobs(tmp_path / "jobs")
    learn = next(j for j in jobs if "--job-name=kmeans-learn" in j)
    assert "--dependency=afterok:1001" in learn  # waits for the valid features array
    for split in ("valid", "test"):
        km = (tmp_path / "lab" / f"{split}.km").read_text().splitlines()
        phn = (mini_corpus / f"{split}.phn").read_text().splitlines()
        assert [len(x.split()) for x in km] == [len(x.split()) for x in phn]
    assert len((tmp_path / "lab" / "dict.km.txt").read_text().splitlines()) == 8
