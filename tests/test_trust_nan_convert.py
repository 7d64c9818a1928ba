"""NaN/Inf checked where audio and weights enter; `convert` never replaces its source nor an existing file
unless asked (issue 27)."""
import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

import speechlm  # noqa: F401  (registers the components)
from speechlm.cli.main import main as cli
from speechlm.data.readers import load_manifest

REPO = Path(__file__).resolve().parents[1]
FIX = REPO / "tests/fixtures/official"
DICTS = ["--dict-ltr", str(FIX / "dict.ltr.txt"), "--dict-phn", str(FIX / "dict.phn.txt")]


def _sha(p: Path) -> str:
    return hashlib.sha1(p.read_bytes()).hexdigest()


def test_convert_refuses_its_source_and_an_existing_destination(tmp_path, capsys):
    src = tmp_path / "released.pt"
    shutil.copyfile(FIX / "pretrained_base.pt", src)
    before = _sha(src)
    assert cli(["convert", str(src), str(src), *DICTS]) == 1
    err = capsys.readouterr().err
    assert f"{src}: is the checkpoint being converted" in err and "give another DST" in err, err
    assert _sha(src) == before
    # the same file under another name (a symbolic link) is still the source
    (tmp_path / "link.pt").symlink_to(src)
    assert cli(["convert", str(src), str(tmp_path / "link.pt"), *DICTS]) == 1
    assert _sha(src) == before
    dst = tmp_path / "ours.pt"
    dst.write_bytes(b"my other work")
    assert cli(["convert", str(src), str(dst), *DICTS]) == 1
    assert f"{dst}: already exists; give --overwrite" in capsys.readouterr().err
    assert dst.read_bytes() == b"my other work"
    assert cli(["convert", str(src), str(dst), *DICTS, "--overwrite"]) == 0
    assert torch.load(dst, weights_only=True)["cfg"]["model"]["_name"] == "speechlm"


def test_convert_refuses_nan_weights(tmp_path, capsys):
    state = torch.load(FIX / "pretrained_base.pt", weights_only=False)
    for k, v in state["model"].items():
        if v.is_floating_point():
            v.fill_(float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    assert cli(["convert", str(tmp_path / "nan.pt"), str(tmp_path / "out.pt"), *DICTS]) == 1
    err = capsys.readouterr().err
    n_float = sum(v.is_floating_point() for v in state["model"].values())
    assert f"nan.pt: {n_float} of {len(state['model'])} weight tensors hold NaN or Inf values" in err, err
    assert "verified" not in err and not (tmp_path / "out.pt").exists()
    # one Inf in one tensor is enough
    state = torch.load(FIX / "pretrained_base.pt", weights_only=False)
    k = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][k].view(-1)[0] = float("inf")
    torch.save(state, tmp_path / "inf.pt")
    assert cli(["convert", str(tmp_path / "inf.pt"), str(tmp_path / "out.pt"), *DICTS]) == 1
    assert f"e.g. {k} (1 of {state['model'][k].numel()})" in capsys.readouterr().err


def test_audio_with_nan_samples_is_refused_with_file_and_line(mini_corpus, tmp_path, capsys):
    d = tmp_path / "c"
    shutil.copytree(mini_corpus, d, ignore=shutil.ignore_patterns("audio"))
    root, rows = load_manifest(d / "valid.tsv")
    wav, sr = sf.read(Path(root) / rows[1][0], dtype="float32")
    wav[100] = np.nan
    bad = tmp_path / "nan.wav"
    sf.write(bad, wav, sr, subtype="FLOAT")
    lines = (d / "valid.tsv").read_text().splitlines()
    lines[2] = f"{bad}\t{len(wav)}"
    (d / "valid.tsv").write_text("\n".join(lines) + "\n")
    os.environ["SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"] = "1"
    try:
        assert cli(["features", "dump", str(d), "valid", str(tmp_path / "f")]) == 1
    finally:
        del os.environ["SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT"]
    err = capsys.readouterr().err
    assert f"{d / 'valid.tsv'}:3: {bad}: holds NaN or infinite samples (the first at sample 100" in err, err
    assert not list((tmp_path / "f").glob("valid_*.npy"))
