"""The embedded mini corpus, its checker, the manifest readers and `speechlm manifest`."""
import argparse
import filecmp
import json
import os
import shutil

import numpy as np
import pytest
import soundfile as sf

from speechlm.cli import corpus as corpus_cli, manifest as manifest_cli
from speechlm.corpora import synth
from speechlm.corpora.mini import SPLITS, build_mini_corpus, check_corpus
from speechlm.data.manifest import num_frames_50hz, num_frames_100hz
from speechlm.data.readers import load_labels, load_manifest, read_audio
from speechlm.data.scan import write_manifests
from speechlm.tokenizers.lexicon import PHONES, letters


def _check(path):
    errors, _ = check_corpus(path)
    return "\n".join(errors)


@pytest.fixture
def corpus_copy(mini_corpus, tmp_path):
    """A private copy of the session corpus (manifests re-rooted) that a test may corrupt."""
    dst = tmp_path / "corpus"
    shutil.copytree(mini_corpus, dst)
    for split in SPLITS:
        tsv = dst / f"{split}.tsv"
        lines = tsv.read_text().splitlines()
        lines[0] = str(dst / "audio")
        tsv.write_text("\n".join(lines) + "\n")
    return dst


def test_mini_corpus_passes_check(mini_corpus):
    args = argparse.Namespace(action="check", dir=str(mini_corpus), no_audio=False)
    assert corpus_cli.run(args) == 0
    summary = json.loads((mini_corpus / "corpus.json").read_text())
    assert all(summary["utterances"][s] > 0 for s in SPLITS)
    assert not set(summary["voices"]["test_other"]) & set(summary["voices"]["train"])
    n_speech = sum(summary["utterances"][s] for s in SPLITS if s != "train_paired")
    assert summary["unpaired_sentences"] >= 20 * n_speech
    # train_paired is a subset of train
    _, train = load_manifest(mini_corpus / "train.tsv")
    _, paired = load_manifest(mini_corpus / "train_paired.tsv")
    assert set(paired) <= set(train)
    phones = [line.split()[0] for line in (mini_corpus / "dict.phn.txt").read_text().splitlines()]
    assert sorted(phones) == sorted(PHONES) and len(phones) == 40
    assert (mini_corpus / "speakers.tsv").read_text().count("\n") == len(synth.VOICES) + 1


def test_labels_match_audio_and_alignments_cover_it(mini_corpus):
    for split in ("train", "test_other"):
        root, rows = load_manifest(mini_corpus / f"{split}.tsv")
        phn = load_labels(mini_corpus / f"{split}.phn", len(rows))
        phn100 = load_labels(mini_corpus / f"{split}.phn100", len(rows))
        wrd = load_labels(mini_corpus / f"{split}.wrd", len(rows))
        ltr = load_labels(mini_corpus / f"{split}.ltr", len(rows))
        ali = [json.loads(x) for x in load_labels(mini_corpus / f"{split}.align.jsonl", len(rows))]
        for (rel, n), p50, p100, w, l, a in zip(rows, phn, phn100, wrd, ltr, ali):
            assert len(read_audio(os.path.join(root, rel))) == n
            assert len(p50.split()) == num_frames_50hz(n)
            assert len(p100.split()) == num_frames_100hz(n)
            assert l == letters(w) and l.endswith("|")
            phones = a["phones"]
            assert phones[0][1] == 0 and abs(phones[-1][2] - n / 16000) < 1e-3
            assert all(abs(x[2] - y[1]) < 1e-3 for x, y in zip(phones, phones[1:]))  # contiguous
            assert sum(x[0] != "SIL" for x in phones) >= len(w.split())
            if a["words"] is not None:
                assert [x[0] for x in a["words"]] == w.split()
                assert all(0 <= s < e <= n / 16000 + 1e-3 for _, s, e in a["words"])
            sil = p50.split().count("SIL") / len(p50.split())
            assert sil < 0.5, f"{rel}: {sil:.0%} of frames are silence"


def test_silence_labels_fall_on_quiet_frames(mini_corpus):
    """The true alignments line up with the audio: SIL frames are far quieter than vowel frames."""
    root, rows = load_manifest(mini_corpus / "train.tsv")
    phn = load_labels(mini_corpus / "train.phn", len(rows))
    spk = load_labels(mini_corpus / "train.spk", len(rows))
    energy = {}
    for (rel, _), labels, voice in zip(rows, phn, spk):
        x = read_audio(os.path.join(root, rel))
        for i, label in enumerate(labels.split()):
            frame = x[i * 320:i * 320 + 400]
            kind = "SIL" if label == "SIL" else "vowel" if label[0] in "AEIOU" else None
            if kind:
                energy.setdefault((voice, kind), []).append(10 * np.log10(np.mean(frame**2) + 1e-10))
    for voice in set(spk):
        if (voice, "SIL") in energy:
            sil, vowel = np.mean(energy[voice, "SIL"]), np.mean(energy[voice, "vowel"])
            assert sil < vowel - 15, f"{voice}: SIL {sil:.1f} dB vs vowels {vowel:.1f} dB"


@pytest.mark.slow
def test_same_seed_gives_identical_files(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    build_mini_corpus(a, hours=0.008, seed=7, jobs=1, verbose=False)
    build_mini_corpus(b, hours=0.008, seed=7, jobs=2, verbose=False)
    names = sorted(os.path.relpath(os.path.join(d, f), a) for d, _, fs in os.walk(a) for f in fs)
    assert names == sorted(os.path.relpath(os.path.join(d, f), b) for d, _, fs in os.walk(b) for f in fs)
    for name in names:
        if name == "corpus.json":  # holds the build time
            continue
        fa, fb = a / name, b / name
        if name.endswith(".tsv") and name != "speakers.tsv":  # first line is the absolute root
            assert fa.read_text().split("\n", 1)[1] == fb.read_text().split("\n", 1)[1], name
        else:
            assert filecmp.cmp(fa, fb, shallow=False), name


def test_rebuild_with_same_arguments_does_nothing(mini_corpus, capsys):
    from tests.conftest import MINI_CORPUS_HOURS, MINI_CORPUS_SEED

    before = (mini_corpus / "train.tsv").stat().st_mtime
    build_mini_corpus(mini_corpus, hours=MINI_CORPUS_HOURS, seed=MINI_CORPUS_SEED)
    assert "already complete" in capsys.readouterr().out
    assert (mini_corpus / "train.tsv").stat().st_mtime == before
    with pytest.raises(ValueError, match="built with"):
        build_mini_corpus(mini_corpus, hours=0.5, seed=MINI_CORPUS_SEED)


def test_check_names_a_missing_label_line(corpus_copy):
    wrd = corpus_copy / "valid.wrd"
    lines = wrd.read_text().splitlines()
    del lines[1]  # the 2nd line goes missing: the file now ends one line early
    wrd.write_text("\n".join(lines) + "\n")
    report = _check(corpus_copy)
    assert f"{wrd}:{len(lines) + 1}: has {len(lines)} lines but" in report
    assert f"{wrd}:2" in report  # letters no longer spell the words from line 2 on
    args = argparse.Namespace(action="check", dir=str(corpus_copy), no_audio=False)
    assert corpus_cli.run(args) == 1


def test_check_names_a_row_with_a_missing_file(corpus_copy):
    tsv = corpus_copy / "test.tsv"
    lines = tsv.read_text().splitlines()
    lines[2] = "test/nobody/missing.wav\t12345"  # file line 3
    tsv.write_text("\n".join(lines) + "\n")
    report = _check(corpus_copy)
    assert f"{tsv}:3: " in report and "missing.wav: audio file not found" in report


def test_check_and_read_audio_reject_8khz(corpus_copy):
    path = corpus_copy / "audio" / "valid" / "narrowband.wav"
    sf.write(path, np.zeros(8000, dtype=np.int16), 8000, subtype="PCM_16")
    tsv = corpus_copy / "valid.tsv"
    lines = tsv.read_text().splitlines()
    lines[1] = "valid/narrowband.wav\t8000"  # file line 2
    tsv.write_text("\n".join(lines) + "\n")
    report = _check(corpus_copy)
    assert f"{tsv}:2: {path}: is 8000 Hz" in report and "sox" in report
    with pytest.raises(ValueError, match=r"is 8000 Hz; speechlm expects 16000 Hz mono: resample with `sox"):
        read_audio(path)


def test_check_catches_a_test_sentence_in_training(corpus_copy):
    test_sentence = (corpus_copy / "test.wrd").read_text().splitlines()[0]
    with open(corpus_copy / "unpaired.wrd", "a") as f:
        f.write(test_sentence + "\n")
    assert f"{corpus_copy / 'test.wrd'}:1: sentence also in training data" in _check(corpus_copy)


def test_manifest_readers_name_file_and_line(tmp_path):
    tsv = tmp_path / "x.tsv"
    tsv.write_text("/data\na.wav\t100\nb.wav 200\n")
    with pytest.raises(ValueError, match=f"{tsv}:3: malformed manifest row"):
        load_manifest(tsv)
    labels = tmp_path / "x.wrd"
    labels.write_text("A\n")
    with pytest.raises(ValueError, match=f"{labels}:2: has 1 lines but .* has 2 rows"):
        load_labels(labels, 2)
    with pytest.raises(FileNotFoundError, match="not found"):
        read_audio(tmp_path / "nothing.wav")
    assert num_frames_50hz(400) == 1 and num_frames_50hz(16000) == 49 and num_frames_50hz(399) == 0
    assert num_frames_100hz(16000) == 98


def test_espeak_table_covers_everything_synthesized(mini_corpus):
    seen = json.loads((mini_corpus / "corpus.json").read_text())["engine_phones_seen"]
    known = set(synth.ESPEAK_TO_ARPABET) | set(synth.FLITE_TO_ARPABET)
    assert set(seen) <= known
    # sounds the sampled sentences may miss: r-coloured vowels, syllabic consonants, glides, flaps
    text = "THE FIRE OF THE WATER SERIOUS HOUR POOR CURE BUTTON LITTLE PLEASURE LOCH WHICH OF THE EARTH"
    for voice in synth.VOICES:
        utt = synth.synthesize(text, voice)  # raises UnknownPhoneError on an unmapped mnemonic
        assert {p for p, _, _ in utt.phones} <= set(PHONES)
        assert utt.words is not None and [w for w, _, _ in utt.words] == text.split(), voice.name
    with pytest.raises(synth.UnknownPhoneError, match="no ARPAbet mapping"):
        synth.map_phone("espeak-ng", "zz")


def test_manifest_cli_rejects_a_corrupt_file(tmp_path):
    root = tmp_path / "audio"
    (root / "sub").mkdir(parents=True)
    sf.write(root / "a.wav", np.zeros(1600, dtype=np.int16), 16000)
    sf.write(root / "sub" / "b.wav", np.zeros(3200, dtype=np.int16), 16000)
    (root / "sub" / "broken.wav").write_bytes(b"RIFF not really a wav file")
    dest = tmp_path / "manifests"
    args = argparse.Namespace(root=str(root), dest=str(dest), ext="wav", valid_percent=0.5, seed=1)
    errors, _ = write_manifests(str(root), str(dest), "wav", 0.5, 1)
    assert len(errors) == 1 and str(root / "sub" / "broken.wav") in errors[0]
    assert manifest_cli.run(args) == 1
    assert not dest.exists() or not os.listdir(dest)  # no partial manifests
    (root / "sub" / "broken.wav").unlink()
    assert manifest_cli.run(args) == 0
    rows = load_manifest(dest / "train.tsv")[1] + load_manifest(dest / "valid.tsv")[1]
    assert sorted(rows) == [("a.wav", 1600), ("sub/b.wav", 3200)]
