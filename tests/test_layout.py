"""The package's shape: import arrows point one way, and the command line stays light."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "speechlm"
def _console_script() -> str:
    script = Path(sys.executable).with_name("speechlm")
    if not script.is_file():
        pytest.skip(f"{script}: the console script is not installed (pip install -e .)")
    return str(script)


@pytest.mark.parametrize("argv", [["--help"], ["phonemize", "--help"], ["corpus", "--help"], ["binarize", "--help"],
                                  ["-m", "manifest", "--help"]])
def test_help_imports_neither_torch_nor_fairseq(argv):
    """``speechlm VERB --help`` (and ``python -m speechlm``) must not pay for torch and fairseq."""
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONPATH": str(PACKAGE.parent)}
    cmd = [sys.executable, "-m", "speechlm", *argv[1:]] if argv[0] == "-m" else [_console_script(), *argv]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "usage: speechlm" in res.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
    assert "speechlm" in imported and not imported & {"torch", "fairseq"}, sorted(imported & {"torch", "fairseq"})


def test_phonemize_and_manifest_run_without_torch_or_fairseq(tmp_path):
    """Text and manifest preparation need neither torch nor fairseq, not even when they do the work."""
    import numpy as np
    import soundfile as sf

    (tmp_path / "lm.txt").write_text("In the beginning God created the heaven and the earth.\nAnd it was so.\n")
    (tmp_path / "audio").mkdir()
    sf.write(tmp_path / "audio" / "a.wav", np.zeros(3200, dtype=np.int16), 16000)
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1", "PYTHONPATH": str(PACKAGE.parent)}
    for argv in (["phonemize", str(tmp_path / "lm.txt"), "--out-prefix", str(tmp_path / "lm")],
                 ["manifest", str(tmp_path / "audio"), "--dest", str(tmp_path / "man"), "--valid-percent", "0"]):
        res = subprocess.run([sys.executable, "-m", "speechlm", *argv], capture_output=True, text=True, env=env,
                             timeout=300)
        assert res.returncode == 0, res.stderr[-2000:]
        imported = {line.split("|")[-1].strip().split(".")[0] for line in res.stderr.splitlines() if "|" in line}
        assert not imported & {"torch", "fairseq"}, (argv[0], sorted(imported & {"torch", "fairseq"}))
    assert len((tmp_path / "lm.phn").read_text().splitlines()) == 2
    assert (tmp_path / "man" / "train.tsv").read_text().splitlines()[1] == "a.wav\t3200"


def test_import_speechlm_still_registers_everything():
    code = ("import speechlm\nfrom fairseq.tasks import TASK_REGISTRY\nfrom fairseq.models import MODEL_REGISTRY\n"
            "from fairseq.criterions import CRITERION_REGISTRY\n"
            "print(all(t in TASK_REGISTRY for t in ('speechlm_pretraining', 'text_to_unit', 'splat_pretraining')),"
            " 'speechlm' in MODEL_REGISTRY and 'speechlm' in CRITERION_REGISTRY)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    assert res.stdout.split() == ["True", "True"], res.stderr[-2000:]
