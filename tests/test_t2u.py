"""Text -> hidden units: text_to_unit task/model/criterion through fairseq-hydra-train, t2u generate, binarize."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from fairseq.data import Dictionary

from speechlm.cli.main import main as speechlm_main
from speechlm.data.text_to_unit_dataset import TextToUnitDataset, runs
from speechlm.models.text_to_unit import length_regulate

REPO = Path(__file__).resolve().parents[1]
K = 16


def test_runs_and_length_regulation():
    assert runs("SIL SIL AH B B B SIL".split()) == (["SIL", "AH", "B", "SIL"], [2, 1, 3, 1])
    x = torch.arange(6, dtype=torch.float).view(1, 3, 2).repeat(2, 1, 1)
    y, mask = length_regulate(x, torch.tensor([[2, 0, 1], [1, 1, 0]]))
    assert y.shape == (2, 3, 2) and mask.tolist() == [[False, False, False], [False, False, True]]
    assert y[0, :, 0].tolist() == [0, 0, 4] and y[1, :2, 0].tolist() == [0, 2] and y[1, 2].abs().sum() == 0


def test_dataset_rejects_frame_count_mismatch(tmp_path):
    d = Dictionary()
    for s in ("SIL", "AH", "0", "1"):
        d.add_symbol(s)
    with pytest.raises(ValueError, match=r"u.km:2 has 2 frames but p.phn:2 has 3"):
        TextToUnitDataset(["SIL AH", "SIL AH AH"], ["0 1", "0 1"], d, d, where=("p.phn", "u.km"))


@pytest.fixture(scope="module")
def t2u_data(mini_corpus, tmp_path_factory):
    """train/valid phones (the corpus's 50 Hz alignments) and k-means units (MFCC, K=16)."""
    work = tmp_path_factory.mktemp("t2u")
    feat, lab, data = work / "feat", work / "lab", work / "data"
    for split in ("train", "valid"):
        assert speechlm_main(["features", "dump", str(mini_corpus), split, str(feat)]) == 0
    assert speechlm_main(["kmeans", "learn", str(feat), "train", "--km-path", str(work / "km.npy"), "-k", str(K),
                          "--percent", "0.5", "--n-init", "2", "--max-iter", "20"]) == 0
    for split in ("train", "valid"):
        assert speechlm_main(["kmeans", "apply", str(feat), split, "--km-path", str(work / "km.npy"),
                              "--lab-dir", str(lab)]) == 0
    data.mkdir()
    for split in ("train", "valid"):
        shutil.copy(mini_corpus / f"{split}.phn", data / f"{split}.phn")
        shutil.copy(lab / f"{split}.km", data / f"{split}.km")
    shutil.copy(mini_corpus / "dict.phn.txt", data / "dict.phn.txt")
    shutil.copy(lab / "dict.km.txt", data / "dict.km.txt")
    return data


@pytest.fixture(scope="module")
def t2u_run(t2u_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("t2u_exp")
    cmd = [sys.executable, "-m", "fairseq_cli.hydra_train", "--config-dir", str(REPO / "examples/tokenizers/config"),
           "--config-name", "t2u_tiny", f"common.user_dir={REPO / 'speechlm'}", f"task.data={t2u_data}",
           f"checkpoint.save_dir={save}", "optimization.max_update=30", "common.log_interval=5",
           "dataset.validate_interval_updates=30", "checkpoint.save_interval_updates=30", "dataset.max_tokens=3000",
           "optimization.lr=[0.003]", "lr_scheduler.warmup_updates=10"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    proc = subprocess.run(cmd, cwd=save, env=env, capture_output=True, text=True, timeout=400)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    return save, log


def _json_rows(log, tag):
    rows = []
    for line in log.splitlines():
        if f"[{tag}]" in line and "{" in line:
            rows.append(json.loads(line[line.index("{"):]))
    return rows


@pytest.mark.slow
def test_training_lowers_unit_and_duration_losses(t2u_run):
    save, log = t2u_run
    rows = _json_rows(log, "train_inner")
    assert len(rows) >= 5, log[-2000:]
    first, last = rows[0], rows[-1]
    assert int(last["num_updates"]) == 30
    assert float(last["unit_loss"]) < float(first["unit_loss"]) - 0.3
    assert float(last["dur_loss"]) < float(first["dur_loss"])
    valid = _json_rows(log, "valid")
    assert valid and float(valid[-1]["valid_unit_accuracy"]) > 100.0 / K  # better than chance
    assert (save / "checkpoint_best.pt").is_file()


@pytest.mark.slow
def test_generate_shards_and_binarize(t2u_run, t2u_data, mini_corpus, tmp_path):
    from speechlm.data.unit_text_dataset import load_text_dataset

    save, _ = t2u_run
    text = (mini_corpus / "unpaired.wrd").read_text().splitlines()[:23] + ["the xyzzyq said"]
    (tmp_path / "lm.txt").write_text("\n".join(text) + "\n")
    assert speechlm_main(["phonemize", str(tmp_path / "lm.txt"), "--out-prefix", str(tmp_path / "lm")]) == 0
    ckpt = str(save / "checkpoint_best.pt")
    common = ["--checkpoint", ckpt, "--units", str(tmp_path / "lm.phn"), "--letters", str(tmp_path / "lm.ltr")]
    assert speechlm_main(["t2u", "generate", *common, "--out-prefix", str(tmp_path / "km")]) == 0
    for rank in range(2):
        assert speechlm_main(["t2u", "generate", *common, "--out-prefix", str(tmp_path / "sh"), "--nshard", "2",
                              "--rank", str(rank), "--max-frames", "3000"]) == 0
    assert speechlm_main(["t2u", "merge", "--out-prefix", str(tmp_path / "sh"), "--nshard", "2"]) == 0
    assert (tmp_path / "sh.km").read_bytes() == (tmp_path / "km.km").read_bytes()
    assert (tmp_path / "km.ltr").read_bytes() == (tmp_path / "lm.ltr").read_bytes()
    phn = (tmp_path / "lm.phn").read_text().splitlines()
    km = (tmp_path / "km.km").read_text().splitlines()
    assert [len(x.split()) for x in km] == [len(x.split()) for x in phn]  # the phonemizer's durations kept
    assert {int(u) for line in km for u in line.split()} <= set(range(K))
    # predicted durations: a valid unit sequence of the model's own length
    assert speechlm_main(["t2u", "generate", *common, "--out-prefix", str(tmp_path / "pd"),
                          "--predicted-durations"]) == 0
    assert all(len(x.split()) > 0 for x in (tmp_path / "pd.km").read_text().splitlines())
    dest = tmp_path / "text"
    assert speechlm_main(["binarize", "--units", str(tmp_path / "km.km"), "--letters", str(tmp_path / "km.ltr"),
                          "--unit-dict", str(t2u_data / "dict.km.txt"), "--letter-dict",
                          str(mini_corpus / "dict.ltr.txt"), "--dest", str(dest), "--split", "train"]) == 0
    unit_dict = Dictionary.load(str(dest / "dict.km.txt"))
    ds = load_text_dataset(str(dest), "train", "km", unit_dict, Dictionary.load(str(dest / "dict.ltr.txt")))
    assert len(ds) == len(km)
    assert ds.sizes.tolist() == [len(x.split()) for x in km]
    assert unit_dict.string(ds[3]["units"]).split() == km[3].split()
    assert np.all(np.array([int((ds[i]["units"] == unit_dict.unk()).sum()) for i in range(len(ds))]) == 0)
