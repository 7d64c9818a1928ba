"""The one manifest/audio/label reader (speechlm.data.readers) and the tools that go through it."""
import shutil

import numpy as np
import pytest

from speechlm.data.readers import LabelFile, Manifest, load_labels


@pytest.fixture()
def short_manifest(mini_corpus, tmp_path):
    """valid.tsv with row 2 (file line 3) claiming one sample too many; the real audio, other labels intact."""
    lines = (mini_corpus / "valid.tsv").read_text().splitlines()
    rel, n = lines[2].split("\t")
    lines[2] = f"{rel}\t{int(n) + 1}"
    (tmp_path / "valid.tsv").write_text("\n".join(lines) + "\n")
    for ext in ("phn", "spk", "ltr"):
        shutil.copy(mini_corpus / f"valid.{ext}", tmp_path / f"valid.{ext}")
    shutil.copy(mini_corpus / "dict.phn.txt", tmp_path / "dict.phn.txt")
    return tmp_path / "valid.tsv", rel, int(n)


def _expected(tsv, rel, n):
    root = tsv.read_text().splitlines()[0]
    return f"{tsv}:3: {root}/{rel}: the file has {n} samples but the manifest says {n + 1}"


def test_manifest_audio_checks_the_sample_count(mini_corpus, short_manifest):
    tsv, rel, n = short_manifest
    m = Manifest.load(tsv)
    wav = m.audio(0)
    assert wav.dtype == np.float32 and len(wav) == m.num_samples(0) and np.abs(wav).max() <= 1.0
    with pytest.raises(ValueError) as e:
        m.audio(1)
    assert str(e.value).startswith(_expected(tsv, rel, n))
    assert m.audio_errors(0) == [] and m.audio_errors(1)[0].startswith(_expected(tsv, rel, n))


def test_every_tool_reports_the_same_line(mini_corpus, short_manifest):
    """fbank extraction, feature dumps and the training dataset all go through Manifest.audio."""
    from fairseq.data import Dictionary

    from speechlm.data.fbank import extract_split
    from speechlm.data.speech_label_dataset import SpeechLabelDataset
    from speechlm.tokenizers.features import dump_features, mfcc_39

    tsv, rel, n = short_manifest
    want = _expected(tsv, rel, n)
    with pytest.raises(ValueError, match="^" + want.replace(".", r"\.")):
        extract_split(str(tsv.parent), "valid")
    with pytest.raises(ValueError, match="^" + want.replace(".", r"\.")):
        dump_features(str(tsv), str(tsv.parent / "feats"), "valid", mfcc_39)
    ds = SpeechLabelDataset(str(tsv), str(tsv.parent / "valid.phn"), Dictionary.load(str(tsv.parent / "dict.phn.txt")),
                            length_tolerance=3)
    assert len(ds[0]["label"]) > 0
    with pytest.raises(ValueError, match="^" + want.replace(".", r"\.")):
        ds[1]


def test_label_file_reads_lazily_and_names_lines(mini_corpus, tmp_path):
    from fairseq.data import Dictionary

    m = Manifest.load(mini_corpus / "valid.tsv")
    d = Dictionary.load(str(mini_corpus / "dict.phn.txt"))
    labels = LabelFile(mini_corpus / "valid.phn", len(m), m.path, d)
    whole = load_labels(mini_corpus / "valid.phn", len(m), m.path)
    assert [labels.line(i) for i in range(len(m))] == whole
    assert labels.token_counts() == [len(x.split()) for x in whole]
    ids = labels.encode(labels.tokens(0))
    assert [d[i] for i in ids] == whole[0].split() and d.unk() not in ids
    assert labels.where(4) == f"{mini_corpus / 'valid.phn'}:5"
    short = tmp_path / "short.phn"
    short.write_text("\n".join(whole[:-1]) + "\n")
    with pytest.raises(ValueError, match=rf"short\.phn:{len(m)}: has {len(m) - 1} lines but manifest .*valid\.tsv"):
        LabelFile(short, len(m), m.path, d)
