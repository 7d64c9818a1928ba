"""`speechlm labels` (LibriSpeech transcripts -> .wrd/.ltr/dict.ltr.txt) and the mini corpus written as a
LibriSpeech tree (`speechlm corpus mini OUT --layout librispeech`)."""
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speechlm.cli.main import main as speechlm_main
from speechlm.corpora.librispeech import (
    TranscriptError,
    letters,
    utterance_id,
    write_labels,
)


def _tree(tmp_path: Path, texts: dict, subset="dev-clean"):
    """A tiny LibriSpeech tree: {utt-id: text} -> FLAC files, *.trans.txt and a manifest (sorted ids)."""
    root = tmp_path / "LibriSpeech"
    by_chapter = {}
    for uid, text in texts.items():
        spk, chap, _ = uid.split("-")
        by_chapter.setdefault((spk, chap), []).append(f"{uid} {text}")
        d = root / subset / spk / chap
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"{uid}.flac", np.zeros(1600, np.float32), 16000, format="FLAC")
    for (spk, chap), lines in by_chapter.items():
        (root / subset / spk / chap / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    tsv = tmp_path / "manifests" / "dev.tsv"
    tsv.parent.mkdir(exist_ok=True)
    ids = sorted(texts, reverse=True)  # manifest order differs from file order on purpose
    with open(tsv, "w") as f:
        f.write(f"{root}\n")
        for uid in ids:
            spk, chap, _ = uid.split("-")
            f.write(f"{subset}/{spk}/{chap}/{uid}.flac\t1600\n")
    return root, tsv, ids


def test_labels_follow_manifest_order_and_count_letters(tmp_path):
    texts = {"1-10-0000": "THE CAT", "1-10-0001": "A DOG'S LIFE", "2-20-0000": "HELLO"}
    root, tsv, ids = _tree(tmp_path, texts)
    assert speechlm_main(["labels", str(tsv), "--transcripts", str(root / "dev-clean")]) == 0
    wrd = (tsv.parent / "dev.wrd").read_text().splitlines()
    ltr = (tsv.parent / "dev.ltr").read_text().splitlines()
    assert wrd == [texts[u] for u in ids]
    assert ltr[ids.index("1-10-0001")] == "A | D O G ' S | L I F E |"
    counts = dict(line.split() for line in (tsv.parent / "dict.ltr.txt").read_text().splitlines())
    assert counts["|"] == "6" and counts["'"] == "1" and counts["L"] == "3"
    assert len(counts) == 28  # the whole alphabet is listed, unused letters with count 0
    assert counts["Q"] == "0"


def test_labels_from_a_generic_file_with_a_reused_dict(tmp_path):
    texts = {"1-10-0000": "AB", "1-10-0001": "BA"}
    root, tsv, ids = _tree(tmp_path, texts)
    generic = tmp_path / "text.txt"
    generic.write_text("1-10-0000 ab\n1-10-0001   b  a \n")
    d = tmp_path / "dict.ltr.txt"
    d.write_text("A 5\nB 4\n| 3\n")
    info = write_labels(str(tsv), str(generic), str(d))
    assert (tsv.parent / "dev.wrd").read_text() == "B A\nAB\n"
    assert (tsv.parent / "dict.ltr.txt").read_text() == d.read_text()  # the reused one, unchanged
    assert info["utterances"] == 2 and info["words"] == 3
    generic.write_text("1-10-0000 ab\n1-10-0001 bc\n")
    with pytest.raises(TranscriptError, match=r"text.txt:2: .*'1-10-0001'.*dev.tsv:2.*'C' outside .*dict.ltr.txt"):
        write_labels(str(tsv), str(generic), str(d))


def test_labels_errors_name_the_row_and_where_it_looked(tmp_path, capsys):
    texts = {"1-10-0000": "THE CAT", "1-10-0001": "A DOG"}
    root, tsv, ids = _tree(tmp_path, texts)
    trans = root / "dev-clean/1/10/1-10.trans.txt"
    trans.write_text("1-10-0000 THE CAT\n")  # 1-10-0001 lost
    with pytest.raises(TranscriptError) as e:
        write_labels(str(tsv), str(root))
    msg = str(e.value)
    assert f"{tsv}:2: no transcript for dev-clean/1/10/1-10-0001.flac" in msg
    assert str(trans) in msg
    assert not (tsv.parent / "dev.wrd").exists()  # nothing written on error
    trans.write_text("1-10-0000 THE CAT\n1-10-0001\n")
    with pytest.raises(TranscriptError, match=rf"{trans}:2: empty transcript for '1-10-0001' \(manifest {tsv}:2\)"):
        write_labels(str(tsv), str(root))
    trans.write_text("1-10-0000 THE CAT\n1-10-0001 A DOG 2\n")
    assert speechlm_main(["labels", str(tsv), "--transcripts", str(root)]) == 1
    err = capsys.readouterr().err
    assert f"{trans}:2" in err and "'2' outside the LibriSpeech letters" in err
    with pytest.raises(TranscriptError, match="no \\*.trans.txt files"):
        write_labels(str(tsv), str(tmp_path / "manifests"))


def test_letters_and_utterance_ids():
    assert letters("THE CAT") == "T H E | C A T |"
    assert utterance_id("train-clean-100/103/1240/103-1240-0000.flac") == "103-1240-0000"


@pytest.mark.slow
def test_mini_corpus_as_a_librispeech_tree_round_trips_through_labels(mini_corpus, tmp_path):
    import json
    import shutil

    from speechlm.corpora.librispeech import MINI_TO_LIBRISPEECH, write_librispeech_tree
    from speechlm.data.manifest import write_manifest
    from speechlm.data.readers import load_labels, load_manifest, read_audio
    from tests.conftest import MINI_CORPUS_HOURS, MINI_CORPUS_SEED

    out = tmp_path / "ls"
    shutil.copytree(mini_corpus, out / "mini")  # already built: the command only writes the layout
    assert speechlm_main(["corpus", "mini", str(out), "--layout", "librispeech", "--hours",
                          str(MINI_CORPUS_HOURS), "--seed", str(MINI_CORPUS_SEED)]) == 0
    summary = json.loads((out / "librispeech.done").read_text())
    root = out / "LibriSpeech"
    assert sorted(os.listdir(root)) == sorted(MINI_TO_LIBRISPEECH.values())
    n_paired = len(load_manifest(str(mini_corpus / "train_paired.tsv"))[1])
    n_train = len(load_manifest(str(mini_corpus / "train.tsv"))[1])
    assert summary["subsets"]["train-clean-100"] == n_paired
    assert summary["subsets"]["train-other-500"] == n_train - n_paired  # disjoint, like LibriSpeech
    # dev-clean: every utterance's audio and words survive the layout, in the corpus's order per speaker
    tsv = mini_corpus / "valid.tsv"
    src_root, src_rows = load_manifest(str(tsv))
    src_words = load_labels(str(mini_corpus / "valid.wrd"), len(src_rows))
    flacs = sorted((root / "dev-clean").rglob("*.flac"))
    assert len(flacs) == len(src_rows)
    rows = [(str(p.relative_to(root)), len(read_audio(str(p)))) for p in flacs]
    man = tmp_path / "m" / "dev_clean.tsv"
    man.parent.mkdir()
    write_manifest(str(man), str(root), rows)
    write_labels(str(man), str(root / "dev-clean"))
    words = (man.parent / "dev_clean.wrd").read_text().splitlines()
    assert sorted(words) == sorted(src_words)
    # audio is the same samples (16-bit FLAC of the 16-bit WAV)
    first = read_audio(os.path.join(src_root, src_rows[0][0]))
    match = [p for p, w in zip(flacs, words) if w == src_words[0]]
    assert any(np.array_equal(read_audio(str(p)), first) for p in match)
    # LM text and Kaldi-style lexicon with stress
    lm = (out / "librispeech-lm-norm.txt").read_text().splitlines()
    assert lm == (mini_corpus / "unpaired.wrd").read_text().splitlines()
    lex = dict(line.split("\t") for line in (out / "librispeech-lexicon.txt").read_text().splitlines())
    assert lex["THE"] in ("DH AH0", "DH AH1", "DH IY0") and len(lex) == summary["lexicon_words"]
    # idempotent; another source is refused
    assert write_librispeech_tree(str(out / "mini"), str(out), verbose=False) == summary
    with pytest.raises(ValueError, match="holds the LibriSpeech layout of"):
        write_librispeech_tree(str(mini_corpus), str(out), verbose=False)
