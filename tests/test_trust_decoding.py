"""Decoding is tied to the model's dictionary (issue 27): a fine-tuned model saves its target symbols,
`speechlm infer` and fairseq's loaders (what `fairseq-generate` uses) refuse a task dictionary that lists
other symbols or another order; `speechlm labels` never rewrites an existing dict.ltr.txt."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import speechlm  # noqa: F401  (registers the components)
from speechlm.cli.main import main as cli
from speechlm.dictionaries import first_difference
from speechlm.errors import UserError

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(cmd, log: Path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    res = subprocess.run([str(c) for c in cmd], cwd=REPO, env=env, capture_output=True, text=True)
    log.write_text(res.stdout + res.stderr)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    return res.stdout + res.stderr


@pytest.fixture(scope="module")
def finetuned(mini_corpus, tmp_path_factory):
    """speech-only tiny pre-training (2 updates) -> speechlm_ctc fine-tuning (2 updates)."""
    work = tmp_path_factory.mktemp("dict_ft")
    _run([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples/mini/config/pretrain",
          "--config-name", "speechlm_tiny", f"task.data={mini_corpus}", f"common.user_dir={REPO / 'speechlm'}",
          f"checkpoint.save_dir={work / 'pt'}", f"hydra.run.dir={work / 'h1'}", "optimization.max_update=2",
          "dataset.disable_validation=true"], work / "pt.log")
    _run([BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples/mini/config/finetune",
          "--config-name", "speechlm_ctc_tiny", f"common.user_dir={REPO / 'speechlm'}", f"task.data={mini_corpus}",
          f"model.w2v_path={work / 'pt' / 'checkpoint_last.pt'}", f"checkpoint.save_dir={work / 'ft'}",
          f"hydra.run.dir={work / 'h2'}", "optimization.max_update=2", "dataset.disable_validation=true"],
         work / "ft.log")
    return work / "ft" / "checkpoint_last.pt"


def _reordered_copy(mini_corpus, dst: Path) -> Path:
    shutil.copytree(mini_corpus, dst, ignore=shutil.ignore_patterns("audio"))  # manifests: absolute root
    lines = (dst / "dict.ltr.txt").read_text().splitlines()
    (dst / "dict.ltr.txt").write_text("\n".join(lines[1:2] + lines[:1] + lines[2:]) + "\n")  # swap two ids
    return dst


def test_first_difference_says_what_moved():
    assert first_difference(list("ABC"), list("ABC")) is None
    assert first_difference(list("ABC"), list("BAC")) == ("id 0 is 'A' in the model but 'B' in the dictionary "
                                                          "(2 of 3 ids differ; the same symbols in another order)")
    assert "3 symbols in the model, 4 in the dictionary; not in the model: D" in first_difference(list("ABC"),
                                                                                                  list("ABCD"))


@pytest.mark.slow
def test_infer_and_fairseq_loader_refuse_another_dictionary(finetuned, mini_corpus, tmp_path, capsys):
    saved = torch.load(finetuned, weights_only=True)["cfg"]["model"]
    letters = [ln.split()[0] for ln in (mini_corpus / "dict.ltr.txt").read_text().splitlines()]
    assert saved["target_symbols"] == ["<s>", "<pad>", "</s>", "<unk>"] + letters  # fairseq's specials first
    dec = ["infer", "--config-dir", "examples/mini/config/decode", "--config-name", "infer_viterbi",
           f"common_eval.path={finetuned}", "dataset.gen_subset=valid"]
    assert cli(dec + [f"task.data={mini_corpus}"]) == 0  # its own dictionary: decodes
    capsys.readouterr()
    other = _reordered_copy(mini_corpus, tmp_path / "data")
    assert cli(dec + [f"task.data={other}"]) == 1
    err = capsys.readouterr().err
    assert f"{other}/dict.ltr.txt is not the dictionary {finetuned} was trained with" in err, err
    assert "the same symbols in another order" in err and "Traceback" not in err
    # fairseq's own loader (fairseq-generate, scripts): the model's build refuses it too
    from fairseq import checkpoint_utils

    with pytest.raises(UserError, match=rf"{other}/dict.ltr.txt is not the dictionary the checkpoint's "
                                        r"speechlm_ctc model was trained with"):
        checkpoint_utils.load_model_ensemble_and_task([str(finetuned)], arg_overrides={"data": str(other)})


def test_labels_never_rewrites_an_existing_dictionary(mini_corpus, tmp_path, capsys):
    d = tmp_path / "data"
    d.mkdir()
    shutil.copyfile(mini_corpus / "test.tsv", d / "test.tsv")
    rows = (mini_corpus / "test.tsv").read_text().splitlines()[1:]
    words = (mini_corpus / "test.wrd").read_text().splitlines()
    uids = [Path(r.split("\t")[0]).stem for r in rows]
    # tab-separated (Kaldi text / spreadsheet export) transcripts
    (tmp_path / "text").write_text("".join(f"{u}\t{w.lower()}\n" for u, w in zip(uids, words)))
    train_dict = "".join(f"{c} 1\n" for c in "|EOTAHNISRDLUYWMCGFBPKV'JXQZ")  # training's order
    (d / "dict.ltr.txt").write_text(train_dict)
    assert cli(["labels", str(d / "test.tsv"), "--transcripts", str(tmp_path / "text")]) == 0
    assert (d / "dict.ltr.txt").read_text() == train_dict  # reused, not recounted on the test split
    assert (d / "test.wrd").read_text().splitlines() == [" ".join(w.split()) for w in words]
    capsys.readouterr()
    # --dict-out: the split's own counts go elsewhere; the one beside the manifest stays
    assert cli(["labels", str(d / "test.tsv"), "--transcripts", str(tmp_path / "text"),
                "--dict-out", str(tmp_path / "counts.txt")]) == 0
    assert (d / "dict.ltr.txt").read_text() == train_dict
    assert sorted(ln.split()[0] for ln in (tmp_path / "counts.txt").read_text().splitlines()) == sorted(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ'|")
    # what the existing dictionary cannot spell is refused, naming the line
    (d / "dict.ltr.txt").write_text(train_dict.replace("Z 1\n", ""))
    (tmp_path / "text2").write_text("".join(f"{u} {w}{' ZEBRA' if i == 3 else ''}\n"
                                            for i, (u, w) in enumerate(zip(uids, words))))
    assert cli(["labels", str(d / "test.tsv"), "--transcripts", str(tmp_path / "text2")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'text2'}:4: transcript of {uids[3]!r}" in err and "'Z' outside" in err, err
    # a --dict that differs from the one there is refused
    (d / "dict.ltr.txt").write_text(train_dict)
    (tmp_path / "other.txt").write_text("".join(f"{c} 1\n" for c in "|ABCDEFGHIJKLMNOPQRSTUVWXYZ'"))
    assert cli(["labels", str(d / "test.tsv"), "--transcripts", str(tmp_path / "text"), "--dict",
                str(tmp_path / "other.txt")]) == 1
    assert f"{d / 'dict.ltr.txt'}: already there and lists other letters" in capsys.readouterr().err
    assert (d / "dict.ltr.txt").read_text() == train_dict
