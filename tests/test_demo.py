"""The mini recipe (examples/mini/run.sh) and its summary (scripts/mini_summary.py).

The fast tests score hand-written decode files and read back TensorBoard events that tensorboardX
wrote. The slow one runs the recipe's stages 2-7 on the test corpus with a few updates per step and
checks what a user gets: results.json with rows 1-4 and numbers in range, the PNG, the TensorBoard
logs and the printed table with the tokenizer's scores.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

import mini_summary  # noqa: E402


def _write_run(exp: Path, run: str, name: str, hyps, refs, seed=1, order=1, wall=10.0, tb=None):
    d = exp / "runs" / run
    (d / "decode").mkdir(parents=True)
    for subset in ("test", "test_other"):
        for kind, lines in (("hypo", hyps), ("ref", refs)):
            text = "".join(f"{w} (utt{i})\n" for i, w in enumerate(lines))
            (d / "decode" / f"{subset}.{kind}.wrd").write_text(text)
    (d / "time.finetune").write_text(f'{{"wall": {wall}, "user": {wall / 2}, "sys": 1.0}}\n')
    meta = {"name": name, "seed": seed, "order": order, "pretrain_updates": 0 if tb is None else 50,
            "tensorboard": tb, "decode": f"runs/{run}/decode", "time_from": []}
    (d / "meta.json").write_text(json.dumps(meta))


def test_score_decode_counts_word_and_letter_errors(tmp_path):
    refs = ["THE CAT SAT", "IN THE BEGINNING"]
    hyps = ["THE CAT SAT", "IN A BEGINING"]  # 1 word substituted + 1 word with a deleted letter
    _write_run(tmp_path, "a.s1", "a", hyps, refs)
    wer, cer = mini_summary.score_decode(str(tmp_path / "runs/a.s1/decode"), "test")
    assert wer == pytest.approx(100 * 2 / 6)
    # letters without spaces: refs have 9 + 14 = 23; THE -> A is 3 edits, BEGINNING -> BEGINING 1
    assert cer == pytest.approx(100 * 4 / 23)


def test_read_trn_rejects_a_line_without_an_utterance_id(tmp_path):
    p = tmp_path / "test.hypo.wrd"
    p.write_text("THE CAT (u1)\nNO ID HERE\n")
    with pytest.raises(ValueError, match=r"test.hypo.wrd:2"):
        mini_summary.read_trn(str(p))


def test_seeds_are_averaged_with_their_spread_and_empty_hypotheses_count(tmp_path):
    refs = ["A B C D"]
    _write_run(tmp_path, "x.s1", "x", ["A B C D"], refs, seed=1, wall=10)
    _write_run(tmp_path, "x.s2", "x", ["A B C E"], refs, seed=2, wall=20)
    _write_run(tmp_path, "y.s1", "y", [""], refs, seed=1, order=0)
    rows = mini_summary.aggregate(mini_summary.collect(str(tmp_path)))
    assert [r["name"] for r in rows] == ["y", "x"]  # by order
    y, x = rows
    assert y["test_wer"] == 100.0 and "test_wer_std" not in y
    assert x["test_wer"] == 12.5 and x["test_wer_std"] == pytest.approx(17.68, abs=0.01)
    assert x["seconds"] == 15.0 and x["cpu_seconds"] == pytest.approx((5 + 1 + 10 + 1) / 2)
    assert [s["seed"] for s in x["seeds"]] == [1, 2]


def test_word_lm_decodes_are_reported_beside_viterbi_only_where_they_exist(tmp_path):
    refs = ["A B C D", "E F"]
    _write_run(tmp_path, "ft.s1", "fine-tuned", ["A B X D", "E"], refs)
    _write_run(tmp_path, "zs.s1", "zero-shot", ["X", "Y"], refs, order=2)
    lm = tmp_path / "runs/ft.s1/decode_lm"
    lm.mkdir()
    for subset, hyps in (("test", ["A B C D", "E F"]), ("test_other", ["A B C D", "E G"])):
        for kind, lines in (("hypo", hyps), ("ref", refs)):
            (lm / f"{subset}.{kind}.wrd").write_text("".join(f"{w} (utt{i})\n" for i, w in enumerate(lines)))
    (lm / "setting").write_text("decoding.lm_weight=1 decoding.word_score=2\n")
    assert mini_summary.main(["--exp", str(tmp_path)]) == 0
    ft, zs = json.loads((tmp_path / "results.json").read_text())
    assert ft["test_wer"] == pytest.approx(100 * 2 / 6, abs=0.01) and ft["test_wer_lm"] == 0.0
    assert ft["test_other_wer_lm"] == pytest.approx(100 / 6, abs=0.01)
    assert ft["test_other_cer_lm"] == pytest.approx(100 / 6, abs=0.01)
    assert ft["seeds"][0]["lm_setting"] == "decoding.lm_weight=1 decoding.word_score=2"
    assert "test_wer_lm" not in zs and zs["test_wer"] == 100.0


def test_letter_error_per_voice_from_the_corpus_speaker_files(tmp_path, capsys):
    refs = ["THE CAT", "A DOG", "IN THE"]
    hyps = ["THE CAT", "A DIG", "ON A"]  # voice b: 1 of 4 letters; a: 0 + 4 (INTHE -> ONA) of 6 + 5; seed 2: none
    _write_run(tmp_path, "x.s1", "x", hyps, refs)
    _write_run(tmp_path, "x.s2", "x", refs, refs, seed=2)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for subset in ("test", "test_other"):
        (corpus / f"{subset}.tsv").write_text("/root\nutt0.wav\t16000\nutt1.wav\t16000\nutt2.wav\t16000\n")
        (corpus / f"{subset}.spk").write_text("a\nb\na\n")
    (tmp_path / "units").mkdir()
    (tmp_path / "units/score.train.json").write_text(json.dumps(
        {"frame_accuracy": 0.6, "phone_error_rate": 0.2,
         "by_speaker": {"a": {"frame_accuracy": 0.7, "phone_error_rate": 0.125}, "b": {"frame_accuracy": 0.5,
                                                                                      "phone_error_rate": 0.3}}}))
    capsys.readouterr()
    assert mini_summary.main(["--exp", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| test: a | 18.2 |" in out and "| test_other: b | 12.5 |" in out
    assert "PER per voice: a 12.5 %, b 30.0 %" in out
    (row,) = json.loads((tmp_path / "results.json").read_text())
    assert row["cer_by_voice"]["test"] == {"a": pytest.approx(100 * 4 / 11 / 2, abs=0.01), "b": 12.5}
    assert row["seeds"][0]["seed"] == 1

    (corpus / "test.spk").write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"test.spk: 2 voices but 3 utterances"):
        mini_summary.collect(str(tmp_path))
    (corpus / "test.spk").write_text("a\nb\na\n")
    (corpus / "test.tsv").write_text("/root\nutt0.wav\t16000\nutt1.wav\t16000\nother.wav\t16000\n")
    with pytest.raises(ValueError, match=r"utterance 'utt2' is not in the corpus's test.tsv"):
        mini_summary.collect(str(tmp_path))


def test_tensorboard_scalars_round_trip_and_feed_the_plot(tmp_path):
    from tensorboardX import SummaryWriter

    tb = tmp_path / "runs/p.s1/tb/pretrain"
    w = SummaryWriter(str(tb / "train_inner"))
    for step in (10, 20, 30):
        w.add_scalar("umlm_acc_1", step / 2, step)
        w.add_scalar("uctc_loss", 3.0 - step / 30, step)
    w.close()
    curves = mini_summary.read_scalars(str(tb / "train_inner"))
    assert curves["umlm_acc_1"] == [(10, 5.0), (20, 10.0), (30, 15.0)]
    assert curves["uctc_loss"][-1] == (30, pytest.approx(2.0))

    _write_run(tmp_path, "p.s1", "p", ["A B"], ["A C"], tb="runs/p.s1/tb/pretrain")
    assert mini_summary.main(["--exp", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[0]["name"] == "p" and rows[0]["test_other_wer"] == 50.0 and rows[0]["pretrain_updates"] == 50
    png = (tmp_path / "results.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


@pytest.mark.slow
def test_recipe_stages_2_to_7_on_the_test_corpus(mini_corpus, tmp_path):
    exp = tmp_path / "exp"
    corpus = exp / "corpus"
    corpus.mkdir(parents=True)
    for f in mini_corpus.iterdir():  # the test corpus, with 2,000 of its unpaired sentences
        if f.name != "unpaired.wrd":
            (corpus / f.name).symlink_to(f)
    lines = (mini_corpus / "unpaired.wrd").read_text().splitlines(keepends=True)
    (corpus / "unpaired.wrd").write_text("".join(lines[:2000]))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    r = subprocess.run(
        ["bash", str(REPO / "examples/mini/run.sh"), "--exp", str(exp), "--stage", "2", "--stop-stage", "7",
         "--pretrain-updates", "6", "--finetune-updates", "6", "--tokenizer-epochs", "2"],
        env=env, capture_output=True, text=True, timeout=2400,  # generous: a loaded machine
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((exp / "results.json").read_text())
    names = [row["name"] for row in rows]
    assert names == ["random weights", "speech-only (UMLM)", "SpeechLM-P", "SpeechLM-P zero-shot (UCTC head)"]
    for row in rows:
        for key in ("test_wer", "test_cer", "test_other_wer", "test_other_cer"):
            assert 0.0 <= row[key] <= 1000.0, (row["name"], key, row[key])
        assert row["seconds"] > 0 and row["cpu_seconds"] > 0
    assert [row["pretrain_updates"] for row in rows] == [0, 6, 6, 6]
    # the word 4-gram decodes every fine-tuned row (weights chosen on valid), not the zero-shot one
    assert ["test_wer_lm" in row for row in rows] == [True, True, True, False]
    assert 0.0 <= rows[2]["test_other_wer_lm"] <= 1000.0
    # `speechlm infer --tune-on valid`: the grid's lowest-WER row on valid, then test decoded with it alone
    setting = (exp / "runs/SpeechLM-P.s1/decode_lm/setting").read_text().strip()
    sweep = (exp / "runs/SpeechLM-P.s1/decode_lm/valid.sweep.tsv").read_text().splitlines()
    assert sweep[0].split("\t") == ["lm_weight", "word_score", "wer", "cer"] and len(sweep) == 10
    best = min((line.split("\t") for line in sweep[1:]), key=lambda row: float(row[2]))
    assert setting == f"decoding.lm_weight={best[0]} decoding.word_score={best[1]}"
    assert not (exp / "runs/SpeechLM-P.s1/decode_lm/test.sweep.tsv").exists()
    assert "with the word 4-gram" in r.stdout
    assert (exp / "results.png").stat().st_size > 10_000
    # TensorBoard: fairseq's end-of-epoch "train" stats (a 6-update run logs no train_inner) and "valid"
    for tag in ("train", "valid"):
        assert list((exp / "runs/SpeechLM-P.s1/tb/pretrain" / tag).glob("events.out.tfevents.*")), tag
    score = json.loads((exp / "units/score.train.json").read_text())
    assert 0.0 < score["frame_accuracy"] <= 1.0
    assert "| SpeechLM-P |" in r.stdout and "phone-units tokenizer" in r.stdout
    timing = json.loads((exp / "timing.json").read_text())
    assert sorted(timing["stages"]) == ["2", "3", "4-6"]
    assert timing["stages"]["4-6"]["cpu"] > 1.0 and 0 < timing["idle_estimate"] <= timing["cpu"]
