"""Disk errors are the user's to fix: every verb and training report a full disk, a read-only directory or a
file in the way as one clean message naming the path, and leave no temporary files (issue 27).

Real file systems, not mocks: a tiny tmpfs (disk full: ENOSPC) and a read-only tmpfs (EROFS) are mounted
for the test (root only: the tests run as root, and chmod does not stop root, so a read-only mount is the
honest read-only directory; elsewhere those cases are skipped); a process file-size limit (``ulimit -f``:
EFBIG) and a file where a directory should be (ENOTDIR) need no privileges."""
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from speechlm.cli.main import main as cli
from tests.test_checkpoint import LM_CONFIG

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture()
def mount(tmp_path):
    """``mount(name, size, ro=False, fill=None)`` -> a fresh tmpfs (``fill(path)`` writes into it before a
    read-only remount); unmounted at the end."""
    mounted = []

    def make(name, size="64k", ro=False, fill=None):
        d = tmp_path / name
        d.mkdir()
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)], capture_output=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({r.stderr.decode().strip()}): needs root")
        mounted.append(d)
        if fill:
            fill(d)
        if ro:
            subprocess.run(["mount", "-o", "remount,ro", str(d)], check=True)
        return d

    yield make
    for d in reversed(mounted):
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def _clean(err: str, *needles):
    assert "Traceback" not in err, err
    for n in needles:
        assert n in err, err


def _text(tmp_path, n=3000):
    p = tmp_path / "in.txt"
    p.write_text("the cat sat on the mat and then it sat on the hat\n" * n)
    return p


def test_disk_full_in_phonemize_binarize_and_features(mount, tmp_path, mini_corpus, capsys):
    full = mount("full", size="64k")
    inp = _text(tmp_path)
    assert cli(["phonemize", str(inp), "--out-prefix", str(full / "lm")]) == 1
    _clean(capsys.readouterr().err, "no space left on the device", str(full / "lm"))
    assert os.listdir(full) == []  # no .tmp files filling the disk
    # binarize: units that fit elsewhere, a destination that is full
    assert cli(["phonemize", str(inp), "--out-prefix", str(tmp_path / "t" / "lm")]) == 0
    capsys.readouterr()
    assert cli(["binarize", "--units", str(tmp_path / "t" / "lm.phn"), "--letters", str(tmp_path / "t" / "lm.ltr"),
                "--unit-dict", str(mini_corpus / "dict.phn.txt"), "--letter-dict", str(mini_corpus / "dict.ltr.txt"),
                "--dest", str(full / "bin")]) == 1
    _clean(capsys.readouterr().err, "no space left on the device", str(full / "bin"))
    assert not [p for p in (full / "bin").iterdir()] if (full / "bin").exists() else True
    # features dump: its memory map is reserved first, so a full disk is ENOSPC, not SIGBUS
    assert cli(["features", "dump", str(mini_corpus), "valid", str(full / "feat")]) == 1
    _clean(capsys.readouterr().err, "no space left on the device", str(full / "feat"))
    assert not [p for p in (full / "feat").iterdir() if p.suffix in (".npy", ".len")]


def test_read_only_directory_in_manifest_labels_binarize(mount, tmp_path, mini_corpus, capsys):
    import shutil

    ro = mount("ro", size="1m", ro=True, fill=lambda d: shutil.copyfile(mini_corpus / "test.tsv", d / "test.tsv"))
    assert cli(["manifest", str(mini_corpus / "audio"), "--dest", str(ro / "m")]) == 1
    _clean(capsys.readouterr().err, "read-only file system", str(ro / "m"))
    rows = (mini_corpus / "test.tsv").read_text().splitlines()[1:]
    words = (mini_corpus / "test.wrd").read_text().splitlines()
    (tmp_path / "text").write_text("".join(f"{Path(r.split()[0]).stem} {w}\n" for r, w in zip(rows, words)))
    assert cli(["labels", str(ro / "test.tsv"), "--transcripts", str(tmp_path / "text")]) == 1
    _clean(capsys.readouterr().err, "read-only file system", str(ro / "test.wrd"))
    (tmp_path / "u.phn").write_text("SIL AH SIL\n")
    (tmp_path / "u.ltr").write_text("A |\n")
    assert cli(["binarize", "--units", str(tmp_path / "u.phn"), "--letters", str(tmp_path / "u.ltr"), "--unit-dict",
                str(mini_corpus / "dict.phn.txt"), "--letter-dict", str(mini_corpus / "dict.ltr.txt"),
                "--dest", str(ro)]) == 1
    _clean(capsys.readouterr().err, "read-only file system", "give an output directory on a writable file system")


def test_a_file_where_a_directory_should_be(tmp_path, mini_corpus, capsys):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "u.phn").write_text("SIL AH SIL\n")
    (tmp_path / "u.ltr").write_text("A |\n")
    assert cli(["binarize", "--units", str(tmp_path / "u.phn"), "--letters", str(tmp_path / "u.ltr"), "--unit-dict",
                str(mini_corpus / "dict.phn.txt"), "--letter-dict", str(mini_corpus / "dict.ltr.txt"),
                "--dest", str(tmp_path / "afile" / "bin")]) == 1
    _clean(capsys.readouterr().err, str(tmp_path / "afile"), "a part of this path is a file, not a directory")
    assert cli(["phonemize", str(_text(tmp_path, 5)), "--out-prefix", str(tmp_path / "afile" / "lm")]) == 1
    _clean(capsys.readouterr().err, "a part of this path is a file, not a directory")


def test_file_size_limit_ulimit_f(tmp_path):
    """Without root: a process file-size limit (EFBIG) stops the write; the message says so, no temp file."""
    inp = _text(tmp_path)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))

    p = subprocess.run([sys.executable, "-m", "speechlm", "phonemize", str(inp), "--out-prefix", str(tmp_path / "o" / "lm")],
                       preexec_fn=limit, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 1, p.stderr[-2000:]
    _clean(p.stderr, "file too large", str(tmp_path / "o" / "lm"))
    assert os.listdir(tmp_path / "o") == []


@pytest.mark.slow
def test_training_on_a_read_only_or_full_save_dir(mount, tmp_path, mini_corpus):
    lines = (mini_corpus / "unpaired.wrd").read_text().splitlines()[:200]
    (tmp_path / "train.txt").write_text("\n".join(lines[:150]) + "\n")
    (tmp_path / "valid.txt").write_text("\n".join(lines[150:]) + "\n")
    subprocess.run([str(BIN / "fairseq-preprocess"), "--only-source", "--trainpref", "train.txt", "--validpref",
                    "valid.txt", "--destdir", "bin", "--workers", "1"], cwd=tmp_path, check=True, capture_output=True)
    (tmp_path / "lm.yaml").write_text(LM_CONFIG)

    def train(save_dir):
        return subprocess.run(
            [str(BIN / "fairseq-hydra-train"), "--config-dir", str(tmp_path), "--config-name", "lm",
             f"task.data={tmp_path / 'bin'}", f"checkpoint.save_dir={save_dir}", f"hydra.run.dir={tmp_path / 'h'}",
             f"common.user_dir={REPO / 'speechlm'}", "optimization.max_update=2"],
            capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"})

    r = train(mount("ro", size="1m", ro=True) / "ckpt")
    _clean(r.stdout + r.stderr, "read-only file system")
    assert r.returncode == 1
    full = mount("full", size="16k")
    r = train(full / "ckpt")
    _clean(r.stdout + r.stderr, "no space left on the device")
    assert r.returncode == 1
    assert [p.name for p in (full / "ckpt").iterdir() if ".tmp" in p.name] == []
