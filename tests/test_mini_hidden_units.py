"""examples/mini/hidden_units.sh: the mini demo's hidden units for SpeechLM-H (MFCC -> k-means units of the
speech, forced-aligned phones of train_paired -> text-to-unit model -> units of the unpaired text, binarized),
run with tiny settings on the test corpus; then a few SpeechLM-H pre-training updates on what it wrote, with
the overrides examples/mini/run.sh gives its SpeechLM-H row, and the second iteration run.sh --full makes:
units of a pre-trained checkpoint's layer features (--checkpoint CKPT --layer L) instead of MFCC."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speechlm.cli.main import main as speechlm_main
from speechlm.data.manifest import num_frames_50hz
from speechlm.data.readers import load_manifest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "examples" / "mini" / "hidden_units.sh"
K = 16
TEXT_LINES = 120

pytestmark = pytest.mark.slow


def _env():
    env = {k: v for k, v in os.environ.items() if k != "SPEECHLM_LOG_FILE"}  # fairseq's log on stdout
    return {**env, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0",
            "PY": sys.executable}


def _run_script(*args, timeout=1200):  # generous: a loaded machine
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def hidden(mini_corpus, tmp_path_factory):
    """run.sh's stage-2 text (phonemized unpaired sentences) and stage-3 recognizer, then the script."""
    work = tmp_path_factory.mktemp("hidden_units")
    text, units, out = work / "text", work / "units", work / "hidden"
    lines = (mini_corpus / "unpaired.wrd").read_text().splitlines(keepends=True)
    (work / "unpaired.wrd").write_text("".join(lines[:200]))
    for split, src in (("train", work / "unpaired.wrd"), ("valid", mini_corpus / "valid.wrd")):
        assert speechlm_main(["phonemize", str(src), "--out-prefix", str(text / split), "--seed", "1"]) == 0
    assert speechlm_main(["phone-units", "train", str(mini_corpus), "--split", "train_paired", "--save",
                          str(units / "phone_ctc.pt"), "--epochs", "2", "--batch-size", "8"]) == 0
    r = _run_script(mini_corpus, units, text, out, "--k", K, "--km-percent", "1", "--t2u-updates", 20,
                    "--max-text-lines", TEXT_LINES, "--jobs", 2)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return {"out": out, "text": text, "units": units, "stdout": r.stdout}


def _lines(path):
    return Path(path).read_text().splitlines()


def test_speech_units_have_one_line_per_utterance_and_one_unit_per_50hz_frame(mini_corpus, hidden):
    data = hidden["out"] / "data"
    assert [ln.split()[0] for ln in _lines(data / "dict.km.txt")] == [str(k) for k in range(K)]
    for split in ("train", "valid"):
        sizes = [n for _, n in load_manifest(str(data / f"{split}.tsv"))[1]]
        km = _lines(data / f"{split}.km")
        assert len(km) == len(sizes) > 0
        assert [len(ln.split()) for ln in km] == [num_frames_50hz(n) for n in sizes]
        used = {int(u) for ln in km for u in ln.split()}
        assert used <= set(range(K)) and len(used) > K // 2  # k-means used most of its clusters
    assert (data / "dict.ltr.txt").read_text() == (mini_corpus / "dict.ltr.txt").read_text()


def test_t2u_learns_from_the_forced_aligned_paired_subset(mini_corpus, hidden):
    out = hidden["out"]
    n_paired = len(load_manifest(str(mini_corpus / "train_paired.tsv"))[1])
    phn, km = _lines(out / "t2u_data/train.phn"), _lines(out / "t2u_data/train.km")
    assert len(phn) == len(km) == n_paired
    assert [len(p.split()) for p in phn] == [len(u.split()) for u in km]
    assert phn != _lines(mini_corpus / "train_paired.phn")  # the recognizer's alignment, not the true one
    assert (out / "t2u/checkpoint_best.pt").is_file()
    assert "t2u on valid: unit accuracy" in hidden["stdout"]


def test_unpaired_text_units_keep_the_phonemizer_durations_and_load_binarized(hidden):
    from fairseq.data import Dictionary

    from speechlm.data.unit_text_dataset import load_text_dataset

    out, text = hidden["out"], hidden["text"]
    km = _lines(out / "text/train_km.km")
    phn = _lines(text / "train.phn")[:TEXT_LINES]  # --max-text-lines: the first N sentences
    assert len(km) == TEXT_LINES
    assert [len(u.split()) for u in km] == [len(p.split()) for p in phn]
    assert _lines(out / "text/train_km.ltr") == _lines(text / "train.ltr")[:TEXT_LINES]
    assert not list((out / "text").glob("train_km_*"))  # shards merged and removed
    units = Dictionary.load(str(out / "data/dict.km.txt"))
    letters = Dictionary.load(str(out / "text_bin/dict.ltr.txt"))
    assert Dictionary.load(str(out / "text_bin/dict.km.txt")).symbols == units.symbols
    ds = load_text_dataset(str(out / "text_bin"), "train", "km", units, letters)
    assert len(ds) == TEXT_LINES
    assert units.string(ds[7]["units"]).split() == km[7].split()
    valid = load_text_dataset(str(out / "text_bin"), "valid", "km", units, letters)
    assert len(valid) == len(_lines(text / "valid.phn"))


def test_a_second_run_skips_every_step(mini_corpus, hidden):
    out = hidden["out"]
    stamp = {p: p.stat().st_mtime_ns for p in (out / "km.npy", out / "t2u/checkpoint_best.pt",
                                               out / "text/train_km.km", out / "text_bin/train.km-ltr.km.bin")}
    r = _run_script(mini_corpus, hidden["units"], hidden["text"], out, "--k", K, "--max-text-lines", TEXT_LINES)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.count("skipped") >= 5
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp


def test_a_missing_input_is_named(mini_corpus, hidden, tmp_path):
    r = _run_script(mini_corpus, tmp_path, hidden["text"], tmp_path / "out")
    assert r.returncode == 1 and f"{tmp_path}/phone_ctc.pt not found" in r.stderr and "stage 3" in r.stderr


@pytest.fixture(scope="module")
def h_pretrained(hidden, tmp_path_factory):
    """The SpeechLM-H row of run.sh --full: pretrain()'s overrides, then the row's task.labels=[km]."""
    out, save = hidden["out"], tmp_path_factory.mktemp("h_pretrain")
    cmd = [str(Path(sys.executable).parent / "fairseq-hydra-train"),
           "--config-dir", "examples/mini/config/pretrain", "--config-name", "speechlm_tiny",
           f"task.data={out / 'data'}", f"task.text_data={out / 'text_bin'}", "task.labels=[phn]",
           f"common.user_dir={REPO / 'speechlm'}", f"checkpoint.save_dir={save}",
           f"hydra.run.dir={save}/hydra", "optimization.max_update=4", "common.log_interval=2",
           "dataset.validate_interval_updates=4", "checkpoint.save_interval_updates=4",
           "task.labels=[km]"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1200)
    return proc, save / "checkpoint_last.pt"


def test_speechlm_h_pretrains_on_the_hidden_units(h_pretrained):
    proc, checkpoint = h_pretrained
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert f"unit dictionary: {K + 4} types" in log  # K units + fairseq's 4 specials: the km dictionary
    rows = [dict(re.findall(r"(\w+)=([^,\s]+)", line.split(" - ", 1)[1])) for line in log.splitlines()
            if "[train_inner]" in line]
    assert len(rows) == 2, log[-2000:]  # updates 2 and 4
    for row in rows:  # the UMLM loss on the km units and the UCTC loss on the t2u text, both finite
        for key in ("loss", "umlm_loss_1", "uctc_loss"):
            assert math.isfinite(float(row[key])) and float(row[key]) > 0, (key, row)
    assert checkpoint.is_file()


def test_second_iteration_units_come_from_the_checkpoint_layer(mini_corpus, hidden, h_pretrained, tmp_path):
    """--checkpoint CKPT --layer L: k-means of that layer's features (run.sh --full: the speech-only model's),
    the rest of the chain as with MFCC; an OUT_DIR holding other features is refused, not reused."""
    proc, checkpoint = h_pretrained
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    out = tmp_path / "hidden2"
    args = (mini_corpus, hidden["units"], hidden["text"])
    # the forced alignment does not depend on the speech features: the MFCC run's, reused (its step is skipped)
    shutil.copytree(hidden["out"] / "align", out / "align")
    r = _run_script(*args, out, "--k", K, "--km-percent", "1", "--t2u-updates", 4, "--max-text-lines", 20,
                    "--jobs", 1, "--checkpoint", checkpoint, "--layer", 1)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    side = json.loads((out / "feat/train_0_1.shard.json").read_text())
    assert side["options"]["layer"] == 1 and side["inputs"]["checkpoint"]["size"] == checkpoint.stat().st_size
    import numpy as np

    feats = np.load(out / "feat/train_0_1.npy")
    assert feats.shape[1] == 192  # the tiny model's width, not MFCC's 39
    km = _lines(out / "data/train.km")
    assert [len(u.split()) for u in km] == [len(u.split()) for u in _lines(hidden["out"] / "data/train.km")]
    assert km != _lines(hidden["out"] / "data/train.km")  # other features, other clusters
    assert len(_lines(out / "text/train_km.km")) == 20 and (out / "text_bin/train.km-ltr.km.bin").is_file()
    stamp = (out / "km.npy").stat().st_mtime_ns  # asking for MFCC (or another layer) there: refused
    for other in ((), ("--checkpoint", checkpoint, "--layer", 2)):
        r = _run_script(*args, out, "--k", K, "--max-text-lines", 20, *other)
        assert r.returncode == 1 and "holds the features of layer 1 of a checkpoint" in r.stderr, r.stderr
        assert f"delete {out}" in r.stderr
    assert (out / "km.npy").stat().st_mtime_ns == stamp
    r = _run_script(*args, hidden["out"], "--k", K, "--checkpoint", checkpoint, "--layer", 1)
    assert r.returncode == 1 and "holds the features of MFCC" in r.stderr, r.stderr


def test_no_paired_data_row_has_one_vocabulary_for_km_speech_and_phoneme_text(mini_corpus, hidden, tmp_path):
    """--no-paired (run.sh --full's "SpeechLM without paired data"): the MFCC k-means units of the speech and
    the text's phonemes in one dictionary; no recognizer needed; 4 pre-training updates read both sides."""
    from fairseq.data import Dictionary

    from speechlm.data.unit_text_dataset import load_text_dataset

    out = tmp_path / "np"
    for part in ("feat", "km"):  # the MFCC features and clusters of the fixture's run: steps 1-2 skipped
        shutil.copytree(hidden["out"] / part, out / part)
    shutil.copy(hidden["out"] / "km.npy", out / "km.npy")
    r = _run_script(mini_corpus, tmp_path / "no_recognizer_here", hidden["text"], out, "--k", K, "--no-paired")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    np_dir = out / "nopaired"
    units = Dictionary.load(str(np_dir / "data/dict.kmphn.txt"))
    phones = [ln.split()[0] for ln in _lines(mini_corpus / "dict.phn.txt")]
    assert units.symbols[4:] == [str(k) for k in range(K)] + phones
    assert _lines(np_dir / "data/valid.kmphn") == _lines(hidden["out"] / "km/valid.km")
    assert _lines(np_dir / "phones/valid.kmphn") == _lines(mini_corpus / "valid.phn")  # the analysis' text view
    letters = Dictionary.load(str(mini_corpus / "dict.ltr.txt"))
    ds = load_text_dataset(str(np_dir / "text_bin"), "train", "kmphn", units, letters)
    phn = _lines(hidden["text"] / "train.phn")
    i = next(k for k, line in enumerate(phn) if "SPN" not in line.split())  # SPN (unknown word) is <unk> by design
    assert len(ds) == len(phn) and units.string(ds[i]["units"]).split() == phn[i].split()
    assert not (out / "align").exists() and not (out / "t2u").exists()
    save = tmp_path / "pretrain"
    cmd = [str(Path(sys.executable).parent / "fairseq-hydra-train"),
           "--config-dir", "examples/mini/config/pretrain", "--config-name", "speechlm_tiny",
           f"task.data={np_dir / 'data'}", f"task.text_data={np_dir / 'text_bin'}", "task.labels=[kmphn]",
           f"common.user_dir={REPO / 'speechlm'}", f"checkpoint.save_dir={save}", f"hydra.run.dir={save}/hydra",
           "optimization.max_update=4", "common.log_interval=2", "dataset.disable_validation=true",
           "checkpoint.save_interval_updates=4"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    assert f"unit dictionary: {K + len(phones) + 4} types" in log
    rows = [dict(re.findall(r"(\w+)=([^,\s]+)", line.split(" - ", 1)[1])) for line in log.splitlines()
            if "[train_inner]" in line]
    assert len(rows) == 2 and all(math.isfinite(float(r["uctc_loss"])) for r in rows), log[-2000:]
    r = _run_script(mini_corpus, tmp_path, hidden["text"], tmp_path / "x", "--no-paired", "--checkpoint",
                    save / "checkpoint_last.pt", "--layer", 1)
    assert r.returncode == 2 and "--no-paired clusters MFCC" in r.stderr
