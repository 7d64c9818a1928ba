"""Every writer atomic (issue 27): unique temporary names, nothing half-written under a final name, binarize as
one unit checked by the loader, shard writers locked and checked at merge."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fairseq.data import Dictionary

from speechlm import atomic
from speechlm.cli.main import main as cli
from speechlm.data.unit_text_dataset import check_binarized, load_text_dataset
from speechlm.errors import UserError
from speechlm.tokenizers.binarize import binarize
from speechlm.tokenizers.shards import shard_lock

ROOT = Path(__file__).resolve().parents[1]


def test_atomic_write_unique_temp_and_old_file_kept_on_failure(tmp_path):
    dst = tmp_path / "out.txt"
    assert atomic.temp_name(str(dst)) != atomic.temp_name(str(dst))
    assert f".tmp-{os.getpid()}-" in atomic.temp_name(str(dst))
    with atomic.atomic_write(str(dst)) as f:
        f.write("old\n")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic.atomic_write(str(dst)) as f:
            f.write("new, half written")
            raise RuntimeError("boom")
    assert dst.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]  # no temporary file left


def _text(tmp_path, units, letters):
    (tmp_path / "t.phn").write_text("".join(u + "\n" for u in units))
    (tmp_path / "t.ltr").write_text("".join(x + "\n" for x in letters))
    return str(tmp_path / "t.phn"), str(tmp_path / "t.ltr")


def _dicts(mini_corpus):
    return str(mini_corpus / "dict.phn.txt"), str(mini_corpus / "dict.ltr.txt")


def _load(dest, mini_corpus):
    ud, ld = (Dictionary.load(p) for p in _dicts(mini_corpus))
    return load_text_dataset(str(dest), "train", "phn", ud, ld)


def test_binarize_one_unit_and_a_killed_commit_is_refused(tmp_path, mini_corpus, monkeypatch):
    units = ["SIL AH AH B SIL", "SIL SPN SPN SIL"]  # SPN: the phonemizer's unknown word, <unk> by design
    u, ltr = _text(tmp_path, units, ["A B |", "X |"])
    dest = tmp_path / "bin"
    s = binarize(u, ltr, *_dicts(mini_corpus), str(dest))
    assert s["units"]["replaced"] == {"SPN": 2}
    assert sorted(s["files"]) == ["train.phn-ltr.ltr.bin", "train.phn-ltr.ltr.idx", "train.phn-ltr.phn.bin",
                                  "train.phn-ltr.phn.idx"]
    ds = _load(dest, mini_corpus)
    assert len(ds) == 2 and ds[0]["units"].tolist() == [Dictionary.load(_dicts(mini_corpus)[0]).index(x)
                                                        for x in units[0].split()]
    assert not [p for p in dest.iterdir() if atomic.is_temp(p.name) or p.name.startswith(".")]

    # a run killed while renaming (after the unit files, before the letters and the summary): the
    # loader refuses instead of training on new units beside old letters
    u2, l2 = _text(tmp_path, ["SIL B SIL"] * 3, ["B |"] * 3)
    real = os.replace
    calls = []

    def dying_replace(a, b):
        calls.append(b)
        if len(calls) == 2:
            raise KeyboardInterrupt  # what a kill looks like to the code after it
        return real(a, b)

    monkeypatch.setattr(atomic.os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        binarize(u2, l2, *_dicts(mini_corpus), str(dest))
    monkeypatch.setattr(atomic.os, "replace", real)
    assert not (dest / "train.phn-ltr.summary.json").exists()
    with pytest.raises(UserError, match=r"train.phn-ltr.summary.json: missing, so .* were not finished"):
        _load(dest, mini_corpus)
    assert not [p for p in dest.iterdir() if atomic.is_temp(p.name) or p.name.startswith(".")]

    # a finished run whose .bin is cut afterwards (copy cut short, disk trouble)
    binarize(u, ltr, *_dicts(mini_corpus), str(dest))
    check_binarized(str(dest), "train", "phn")
    b = dest / "train.phn-ltr.ltr.bin"
    b.write_bytes(b.read_bytes()[:-4])
    with pytest.raises(UserError, match=r"train.phn-ltr.ltr.bin: \d+ bytes, but the binarize run"):
        _load(dest, mini_corpus)


def test_a_real_kill_leaves_nothing_under_final_names(tmp_path, mini_corpus):
    n = 60000
    u, ltr = _text(tmp_path, ["SIL AH B AH B AH B AH B SIL"] * n, ["A B A B |"] * n)
    dest = tmp_path / "bin"
    code = ("import sys; from speechlm.tokenizers.binarize import binarize; "
            "binarize(*sys.argv[1:6])")
    p = subprocess.Popen([sys.executable, "-c", code, u, ltr, *_dicts(mini_corpus), str(dest)],
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    # kill it once it started writing (its temporary directory exists), before it finishes
    for _ in range(600):
        if dest.exists() and any(p_.name.startswith(".train") for p_ in dest.iterdir()) or p.poll() is not None:
            break
        time.sleep(0.05)
    p.kill()
    p.wait()
    names = [x.name for x in dest.iterdir()] if dest.exists() else []
    if "train.phn-ltr.summary.json" in names:  # it finished before the kill: then it must be whole
        check_binarized(str(dest), "train", "phn")
        assert len(_load(dest, mini_corpus)) == n
    else:
        assert not [x for x in names if x.startswith("train.")], names  # nothing under a final name
        with pytest.raises(UserError, match="binarized text not found"):
            _load(dest, mini_corpus)


def test_binarize_refuses_empty_input_and_symbols_outside_the_dictionary(tmp_path, mini_corpus, capsys):
    (tmp_path / "e.phn").write_text("")
    (tmp_path / "e.ltr").write_text("")
    ud, ld = _dicts(mini_corpus)
    base = ["binarize", "--unit-dict", ud, "--letter-dict", ld, "--dest", str(tmp_path / "bin")]
    assert cli(base + ["--units", str(tmp_path / "e.phn"), "--letters", str(tmp_path / "e.ltr")]) == 1
    assert "are empty: nothing to binarize" in capsys.readouterr().err
    assert not (tmp_path / "bin").exists() or not list((tmp_path / "bin").iterdir())

    u, ltr = _text(tmp_path, ["SIL AH SIL", "SIL B SIL", "SIL AH SIL"], ["A |", "B |", "A 1 |"])
    assert cli(base + ["--units", u, "--letters", ltr]) == 1
    err = capsys.readouterr().err
    assert f"{ltr}:3: symbol '1' is not in {ld}" in err and "write numbers as words" in err, err
    assert "Traceback" not in err
    assert not list((tmp_path / "bin").iterdir())
    assert cli(base + ["--units", u, "--letters", ltr, "--allow-unk"]) == 0
    assert "1 -> <unk>" in capsys.readouterr().err
    # a phone of another inventory on the unit side is refused too (SPN alone is the unknown word)
    u, ltr = _text(tmp_path, ["SIL AH_B SIL"], ["A |"])
    assert cli(base + ["--units", u, "--letters", ltr, "--split", "x"]) == 1
    assert f"{u}:1: symbol 'AH_B' is not in {ud}" in capsys.readouterr().err


def _phonemize(inp, out, rank, seed):
    return subprocess.Popen(
        [sys.executable, "-m", "speechlm", "phonemize", str(inp), "--out-prefix", out, "--nshard", "2",
         "--rank", str(rank), "--seed", str(seed)],
        env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_same_rank_writers_and_the_merge_checks(tmp_path, mini_corpus, capsys):
    lines = (Path(mini_corpus) / "unpaired.wrd").read_text().splitlines()
    inp = tmp_path / "in.txt"
    inp.write_text("\n".join((lines * (6000 // len(lines) + 1))[:6000]) + "\n")
    out = str(tmp_path / "o" / "lm")
    # while one process writes rank 0, a second one for rank 0 is refused at once
    with shard_lock(out + "_0_2"):
        p = _phonemize(inp, out, 0, 7)
        _, err = p.communicate(timeout=300)
    assert p.returncode == 1 and "another process (pid" in err and "is writing this shard" in err, err
    assert not Path(out + "_0_2.phn").exists()
    # two real concurrent runs of rank 0 (other seeds): whatever the interleaving, the shard that
    # survives is one run's, whole, and its sidecar names that run's seed
    a, b = _phonemize(inp, out, 0, 1), _phonemize(inp, out, 0, 2)
    ra, rb = a.wait(timeout=600), b.wait(timeout=600)
    errs = a.stderr.read() + b.stderr.read()
    assert (ra, rb) in ((0, 0), (0, 1), (1, 0)), errs
    assert "Traceback" not in errs
    assert cli(["phonemize", str(inp), "--out-prefix", out, "--nshard", "2", "--rank", "1", "--seed", "1"]) == 0
    seed = json.loads(Path(out + "_0_2.shard.json").read_text())["options"]["seed"]
    if seed != 1:  # the seed-2 run wrote last: rank 1 must match it for the merge
        assert cli(["phonemize", str(inp), "--out-prefix", out, "--nshard", "2", "--rank", "1", "--seed",
                    str(seed)]) == 0
    shard0 = Path(out + "_0_2.phn").read_text()
    assert cli(["phonemize", "--merge", "--out-prefix", out, "--nshard", "2"]) == 0
    n_phn = len(Path(out + ".phn").read_text().splitlines())
    assert n_phn == len(Path(out + ".ltr").read_text().splitlines()) == 6000
    # the surviving shard is exactly what its sidecar's seed produces
    ref = str(tmp_path / "ref" / "lm")
    assert cli(["phonemize", str(inp), "--out-prefix", ref, "--nshard", "2", "--rank", "0", "--seed",
                str(seed)]) == 0
    assert Path(ref + "_0_2.phn").read_text() == shard0
    capsys.readouterr()

    # a shard rewritten after its sidecar (a stray second writer without the lock): refused
    Path(out + "_0_2.phn").write_text(shard0 + "SIL\n")
    assert cli(["phonemize", "--merge", "--out-prefix", out, "--nshard", "2"]) == 1
    err = capsys.readouterr().err
    assert f"{out}_0_2.phn is not the file {out}_0_2.shard.json recorded" in err, err
    # a shard whose line-aligned files differ in length, even with a sidecar that agrees with them
    from speechlm.tokenizers.shards import write_sidecar

    write_sidecar(out + "_0_2", "phonemize", 0, 2, {}, {})
    assert cli(["phonemize", "--merge", "--out-prefix", out, "--nshard", "2"]) == 1
    err = capsys.readouterr().err
    n0 = len(shard0.splitlines())
    assert "line-aligned files of one shard differ in length" in err and f"_0_2.phn: {n0 + 1}" in err, err
