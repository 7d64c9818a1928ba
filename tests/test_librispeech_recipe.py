"""examples/librispeech/run.sh end to end on a miniature LibriSpeech tree (the mini corpus in LibriSpeech's
layout), tiny settings: manifests -> transcripts -> text units -> speech phone units -> hidden units ->
SpeechLM-P/-H pre-training -> fine-tuning -> Viterbi and KenLM decoding, to a WER table."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from speechlm.cli.main import main as speechlm_main
from tests.conftest import MINI_CORPUS_HOURS, MINI_CORPUS_SEED

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_librispeech_recipe_runs_every_stage_to_a_wer_table(mini_corpus, tmp_path):
    pytest.importorskip("pyctcdecode")
    pytest.importorskip("kenlm")
    tree = tmp_path / "ls"
    shutil.copytree(mini_corpus, tree / "mini")
    assert speechlm_main(["corpus", "mini", str(tree), "--layout", "librispeech", "--hours",
                          str(MINI_CORPUS_HOURS), "--seed", str(MINI_CORPUS_SEED)]) == 0
    exp = tmp_path / "exp"
    cmd = ["bash", str(REPO / "examples/librispeech/run.sh"), "--librispeech", str(tree), "--lm-text",
           str(tree / "librispeech-lm-norm.txt"), "--lexicon", str(tree / "librispeech-lexicon.txt"),
           "--exp", str(exp), "--size", "tiny", "--recognizer-epochs", "3",
           # the tiny tree's train-clean-100 has too few utterances with every word in the lexicon
           "--recognizer-subset", "train_960", "--k", "20", "--t2u-updates", "10",
           "--pretrain-updates", "10", "--finetune-updates", "10", "--lm-lines", "3000"]
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    table = (exp / "wer.txt").read_text().splitlines()
    rows = {}
    for line in table:
        m = re.match(r"^(SpeechLM-[PH]) (viterbi|kenlm) (\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+([\d.]+)", line)
        assert m, line
        rows[m.group(1, 2, 3)] = (int(m.group(4)), int(m.group(5)), float(m.group(6)))
    subsets = ("dev_clean", "test_clean", "test_other")
    assert set(rows) == {(m, d, s) for m in ("SpeechLM-P", "SpeechLM-H") for d in ("viterbi", "kenlm")
                         for s in subsets}
    for (model, dec, subset), (utts, words, wer) in rows.items():
        n = len((exp / "data" / f"{subset}.tsv").read_text().splitlines()) - 1
        assert utts == n and words > 0 and wer >= 0.0
        hyp = (exp / f"decode_{model[-1].lower()}_{dec}" / f"{subset}.hypo.wrd").read_text().splitlines()
        assert len(hyp) == n
    # every stage's outputs, with the unpaired speech labelled by the phone LM
    n960 = len((exp / "data/train_960.tsv").read_text().splitlines()) - 1
    assert len((exp / "phn/train_960.phn").read_text().splitlines()) == n960
    assert len((exp / "km/train_960.km").read_text().splitlines()) == n960
    for f in ("text_bin/train.phn-ltr.phn.idx", "text_bin/train.km-ltr.km.idx", "pretrain_p/checkpoint_last.pt",
              "pretrain_h/checkpoint_last.pt", "finetune_p/checkpoint_best.pt", "finetune_h/checkpoint_best.pt"):
        assert (exp / f).exists(), f
    steps = {line.split("\t")[0] for line in (exp / "cpu_times.tsv").read_text().splitlines()}
    assert {"phonemize", "phone_units_train", "phone_units", "features", "pretrain_p", "finetune_h",
            "decode_kenlm"} <= steps
    # idempotent: a second run of the data stages does nothing and says so
    res = subprocess.run(cmd + ["--stage", "1", "--stop-stage", "5"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    assert "train_960.tsv exists: skipped" in res.stdout and "train_960.km exists: skipped" in res.stdout
    assert len(list(exp.glob("log.*"))) == 2
