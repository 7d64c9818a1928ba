"""Strict readers (issue 13): bad label, dictionary and manifest files are errors naming the file, the line
and the fix, never silent ``<unk>`` or dropped rows. Every test corrupts a copy of the mini corpus."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf

import speechlm  # noqa: F401
from speechlm.cli.main import main as cli_main
from speechlm.data.readers import load_manifest
from speechlm.errors import UserError
from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

BOM = "\ufeff"


@pytest.fixture
def corpus(mini_corpus, tmp_path) -> Path:
    """A writable copy of the mini corpus's text files (the audio stays shared: the manifests' root)."""
    out = tmp_path / "corpus"
    out.mkdir()
    for p in Path(mini_corpus).iterdir():
        if p.is_file():
            shutil.copy(p, out / p.name)
    return out


def task(corpus, **kw):
    cfg = OmegaConf.structured(SpeechLMPretrainingConfig(
        data=str(corpus), seed=1, train_subset="train", min_sample_size=0, **kw))
    return SpeechLMPretrainingTask.setup_task(cfg)


def edit_line(path: Path, lineno: int, fn, encoding="utf-8"):
    lines = path.read_text(encoding="utf-8").split("\n")
    lines[lineno - 1] = fn(lines[lineno - 1])
    path.write_bytes("\n".join(lines).encode(encoding))


@pytest.mark.parametrize("name,fine_tuning", [("valid.ltr", True), ("valid.phn", False),
                                              ("dict.ltr.txt", True), ("dict.phn.txt", False)])
def test_a_bom_is_an_error_naming_the_file(corpus, name, fine_tuning):
    p = corpus / name
    p.write_text(BOM + p.read_text(encoding="utf-8"), encoding="utf-8")
    with pytest.raises(UserError, match=rf"{p}:1: starts with a UTF-8 byte-order mark .*sed -i"):
        task(corpus, fine_tuning=fine_tuning).load_dataset("valid")


def test_lowercase_letters_name_the_line_and_the_fix(corpus):
    edit_line(corpus / "valid.ltr", 3, str.lower)
    with pytest.raises(UserError, match=r"valid\.ltr:3: symbol '[a-z]' is not in the dictionary .* upper-case"):
        task(corpus, fine_tuning=True).load_dataset("valid")


def test_a_non_utf8_byte_names_the_line(corpus):
    edit_line(corpus / "valid.ltr", 2, lambda s: s + " \u00c9 |", encoding="latin-1")
    with pytest.raises(UserError, match=r"valid\.ltr:2: byte 0xc9 is not UTF-8 .*iconv"):
        task(corpus, fine_tuning=True).load_dataset("valid")


def test_an_unknown_phone_is_an_error_unless_allowed(corpus):
    edit_line(corpus / "valid.phn", 4, lambda s: " ".join(["QQ"] + s.split()[1:]))
    with pytest.raises(UserError, match=r"valid\.phn:4: symbol 'QQ' is not in the dictionary .*task\.allow_unk_labels=true"):
        task(corpus).load_dataset("valid")
    t = task(corpus, allow_unk_labels=True)
    t.load_dataset("valid")
    ds = t.dataset("valid").speech
    assert ds.get_label(3)[0] == t.unit_dictionary.unk() and ds.labels.num_unk == 1


def test_kmeans_ids_beyond_k_are_an_error(corpus):
    (corpus / "dict.km.txt").write_text("".join(f"{i} 1\n" for i in range(10)))
    lines = (corpus / "valid.phn").read_text().splitlines()
    km = [" ".join(str(hash(t) % 10) for t in ln.split()) for ln in lines]
    km[1] = " ".join(["12"] + km[1].split()[1:])
    (corpus / "valid.km").write_text("\n".join(km) + "\n")
    with pytest.raises(UserError, match=r"valid\.km:2: symbol '12' .* k-means id 12 >= K=10"):
        task(corpus, labels=["km"]).load_dataset("valid")


def test_empty_and_too_long_transcripts_are_errors(corpus):
    edit_line(corpus / "valid.ltr", 2, lambda s: "")
    with pytest.raises(UserError, match=r"valid\.ltr:2: utterance .* has an empty transcript"):
        task(corpus, fine_tuning=True).load_dataset("valid")
    edit_line(corpus / "valid.ltr", 2, lambda s: " ".join(["A"] * 2000))
    with pytest.raises(UserError, match=r"valid\.ltr:2: utterance .* transcript needs 3999 CTC frames but"):
        task(corpus, fine_tuning=True).load_dataset("valid")


def test_a_duplicate_dictionary_symbol_is_an_error(corpus):
    p = corpus / "dict.ltr.txt"
    p.write_text(p.read_text() + "E 1\n")
    n = len(p.read_text().splitlines())
    with pytest.raises(UserError, match=rf"dict\.ltr\.txt:{n}: symbol 'E' repeats line"):
        task(corpus, fine_tuning=True)


def test_manifest_paths_stay_under_the_root(corpus, monkeypatch):
    tsv = corpus / "valid.tsv"
    root, rows = load_manifest(tsv)
    for bad in ("../elsewhere/x.wav", os.path.join(root, rows[0][0])):
        edit_line(tsv, 2, lambda s: f"{bad}\t{rows[0][1]}")
        with pytest.raises(UserError, match=r"valid\.tsv:2: path .* leaves the manifest's root"):
            load_manifest(tsv)
    # absolute path to the same file: allowed by the switch, and the dataset reads it
    monkeypatch.setenv("SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT", "1")
    t = task(corpus, fine_tuning=True)
    t.load_dataset("valid")
    assert len(t.dataset("valid")[0]["source"]) == rows[0][1]


def test_a_row_too_short_for_one_frame_is_an_error_not_a_dropped_row(corpus, tmp_path, monkeypatch):
    """Evaluation keeps every row (min_sample_size 0); one with no 50 Hz frame would vanish from the
    batch (and from the WER), so it is an error naming the manifest line."""
    tsv = corpus / "valid.tsv"
    root, rows = load_manifest(tsv)
    wav, sr = sf.read(os.path.join(root, rows[1][0]), dtype="float32")
    sf.write(tmp_path / "s.wav", wav[:300], sr)
    edit_line(tsv, 3, lambda s: f"{tmp_path / 's.wav'}\t300")
    monkeypatch.setenv("SPEECHLM_ALLOW_PATHS_OUTSIDE_ROOT", "1")
    with pytest.raises(UserError, match=r"valid\.tsv:3: .*s\.wav: has 300 samples, shorter than one 400-sample"):
        task(corpus, fine_tuning=True).load_dataset("valid")


def test_manifest_names_a_cut_short_file(tmp_path, mini_corpus, capsys):
    root, rows = load_manifest(Path(mini_corpus) / "valid.tsv")
    wav, sr = sf.read(os.path.join(root, rows[0][0]), dtype="float32")
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.flac", wav, sr)
    sf.write(audio / "cut.flac", wav, sr)
    data = (audio / "cut.flac").read_bytes()
    (audio / "cut.flac").write_bytes(data[: len(data) // 2])
    assert sf.info(str(audio / "cut.flac")).frames == len(wav)  # the header still promises every sample
    assert cli_main(["manifest", str(audio), "--dest", str(tmp_path / "m"), "--ext", "flac"]) == 1
    err = capsys.readouterr().err
    assert f"{audio / 'cut.flac'}: is damaged or cut short: its header says {len(wav)} samples" in err, err
    assert "good.flac" not in err and not (tmp_path / "m" / "train.tsv").exists()
    (audio / "cut.flac").unlink()
    assert cli_main(["manifest", str(audio), "--dest", str(tmp_path / "m"), "--ext", "flac",
                     "--valid-percent", "0"]) == 0
    assert load_manifest(tmp_path / "m" / "train.tsv")[1] == [("good.flac", len(wav))]
    assert np.isfinite(wav).all()
