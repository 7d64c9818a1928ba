"""The Kaldi position-dependent phone inventory of the released SpeechLM-P models, text side."""
from pathlib import Path

import pytest
from fairseq.data import Dictionary

from speechlm.cli.main import main as speechlm_main
from speechlm.tokenizers.lexicon import (
    ARPABET,
    KALDI_SYMBOLS,
    STRESSED,
    Lexicon,
    LexiconError,
    read_phone_dict,
    word_position_phones,
    write_phone_dict,
)
from speechlm.tokenizers.phonemizer import Phonemizer, PhonemizeStats

OFFICIAL = Path(__file__).parent / "fixtures" / "kaldi" / "dict.phn.txt"


def test_inventory_is_the_released_dict_and_round_trips(tmp_path):
    official = read_phone_dict(str(OFFICIAL))
    assert len(official) == 364 and list(KALDI_SYMBOLS) == official
    write_phone_dict(str(tmp_path / "dict.phn.txt"))
    assert (tmp_path / "dict.phn.txt").read_bytes() == OFFICIAL.read_bytes()
    assert word_position_phones(["K", "AE1", "T"]) == ["K_B", "AE1_I", "T_E"]
    assert word_position_phones(["AH0"]) == ["AH0_S"]
    (tmp_path / "bad.txt").write_text("<eps> 0\nSIL 2\n")
    with pytest.raises(LexiconError, match=r"bad.txt:2: expected 'SYMBOL 1'"):
        read_phone_dict(str(tmp_path / "bad.txt"))


def test_phonemize_kaldi_covers_the_released_symbol_set(tmp_path):
    # a lexicon with every phone and stress variant, as a 1-phone word (PH_S) and a 3-phone word (B, I, E)
    variants = [v for p in ARPABET for v in [p] + ([p + d for d in "012"] if p in STRESSED else [])]
    lex = tmp_path / "lexicon.txt"
    lex.write_text("".join(f"ONE{i} {v}\nTHREE{i}\t{v} {v} {v}\n" for i, v in enumerate(variants)))
    words = [f"{k}{i}" for i in range(len(variants)) for k in ("ONE", "THREE")]
    text = tmp_path / "lm.txt"
    text.write_text("".join(" ".join(words[j:j + 12]) + "\n" for j in range(0, len(words), 12)) + "an xyzzyq\n")
    out = tmp_path / "out" / "lm"
    assert speechlm_main(["phonemize", str(text), "--out-prefix", str(out), "--lexicon", str(lex),
                          "--inventory", "kaldi", "--seed", "2"]) == 0
    produced = {u for line in (tmp_path / "out" / "lm.phn").read_text().splitlines() for u in line.split()}
    never = {"<eps>", "SPN", "SPN_B", "SPN_E", "SPN_I"} | {f"SIL_{x}" for x in "BEIS"}
    # SIL bare between words, the unknown word SPN_S, and every position-dependent phone of the release
    assert produced == {s for s in read_phone_dict(str(OFFICIAL)) if s not in never and not s.startswith("#")}
    assert (tmp_path / "out" / "dict.phn.txt").read_bytes() == OFFICIAL.read_bytes()
    d = Dictionary.load(str(tmp_path / "out" / "dict.phn.txt"))  # fairseq reads the released format
    assert all(d.index(u) != d.unk() for u in produced)
    # a different dict.phn.txt in the output directory is not overwritten
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "dict.phn.txt").write_text("AA 1\n")
    with pytest.raises(SystemExit, match=r"dict.phn.txt exists and is not the Kaldi inventory"):
        speechlm_main(["phonemize", str(text), "--out-prefix", str(tmp_path / "o2" / "lm"), "--lexicon",
                       str(lex), "--inventory", "kaldi"])


def test_kaldi_lexicon_keeps_stress_and_positions(tmp_path):
    lex = tmp_path / "lexicon.txt"
    lex.write_text("CAT K AE1 T\nA\t1.0\tAH0\n")
    lexicon = Lexicon.from_file(str(lex), inventory="kaldi")
    assert lexicon.phones("CAT") == ["K_B", "AE1_I", "T_E"] and lexicon.phones("A") == ["AH0_S"]
    out = Phonemizer(lexicon, sil_prob=0.0).phonemize_block(["a cat xyzzyq"], 0, 0, PhonemizeStats())
    runs = [u for i, u in enumerate(out[0][0].split()) if i == 0 or u != out[0][0].split()[i - 1]]
    assert runs == ["SIL", "AH0_S", "K_B", "AE1_I", "T_E", "SPN_S", "SIL"]
    (tmp_path / "bad.txt").write_text("CAT K AE1 T\nDOG D1 AO1 G\n")
    with pytest.raises(LexiconError, match=r"bad.txt:2: phone 'D1' is not in the Kaldi inventory"):
        Lexicon.from_file(str(tmp_path / "bad.txt"), inventory="kaldi")


def test_kaldi_units_project_onto_the_default_ones(mini_corpus):
    """Same seed: the Kaldi units with stress and position removed are the default ARPAbet units."""
    lines = (mini_corpus / "unpaired.wrd").read_text().splitlines()[:200] + ["zqxv the"]
    a = Phonemizer(Lexicon.cmudict()).phonemize_block(lines, 0, 5, PhonemizeStats())
    k = Phonemizer(Lexicon.cmudict("kaldi")).phonemize_block(lines, 0, 5, PhonemizeStats())
    assert len(a) == len(k) == len(lines)
    symbols = set(KALDI_SYMBOLS)
    for (pa, la), (pk, lk) in zip(a, k):
        assert la == lk and set(pk.split()) <= symbols
        assert [u.split("_")[0].rstrip("012") for u in pk.split()] == pa.split()


def test_recognizer_targets_are_position_independent(tmp_path):
    """`phone-units train --inventory kaldi`: the CTC targets of a Kaldi lexicon are the ARPAbet ones."""
    from speechlm.tokenizers import phone_recognizer

    lex = tmp_path / "lexicon.txt"
    lex.write_text("CAT K AE1 T\nA AH0\n")
    k, a = Lexicon.from_file(str(lex), inventory="kaldi"), Lexicon.from_file(str(lex))
    words = ["A", "CAT", "A"]
    targets = phone_recognizer.ctc_targets
    assert targets(phone_recognizer.transcript_phones(words, k)) == targets(phone_recognizer.transcript_phones(words, a))
    assert phone_recognizer.base_phone("AE1_I") == "AE" and phone_recognizer.base_phone("SIL") == "SIL"
