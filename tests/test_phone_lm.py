"""The n-gram ARPA writer, the phone LM and CTC prefix beam search with it (unpaired-speech phone units)."""
import math

import numpy as np
import pytest

from speechlm.decoding.ngram import write_arpa
from speechlm.tokenizers import phone_recognizer
from speechlm.tokenizers.lexicon import Lexicon
from speechlm.tokenizers.phone_alignment import label_without_transcript
from speechlm.tokenizers.phone_lm import ArpaLM, beam_search, label_with_phone_lm, train_phone_lm
from speechlm.tokenizers.phone_scoring import collapse


def _sentences(seed=0, n=400):
    rng = np.random.default_rng(seed)
    words = "the cat sat on a mat dog ran far away".split()
    return [list(rng.choice(words, size=rng.integers(1, 8))) for _ in range(n)]


@pytest.mark.parametrize("order", [1, 2, 3])
def test_arpa_is_a_normalized_back_off_model(tmp_path, order):
    sents = _sentences()
    info = write_arpa(sents, str(tmp_path / "lm.arpa"), order)
    assert info["order"] == order and len(info["ngrams"]) == order
    lm = ArpaLM.load(str(tmp_path / "lm.arpa"))
    vocab = sorted({w for s in sents for w in s}) + ["</s>"]
    for h in [("<s>",), ("the",), ("cat", "sat"), ("<s>", "dog"), ("mat", "mat"), ("away", "the")]:
        total = sum(math.exp(lm.logp(h, w)) for w in vocab)
        assert total == pytest.approx(1.0, abs=1e-6), h
    # a seen word beats the closed vocabulary's <unk>
    assert lm.logp(("<s>",), "the") > lm.logp(("<s>",), "<unk>")


def test_arpa_reads_in_kenlm_like_our_reader(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    sents = _sentences(1)
    write_arpa(sents, str(tmp_path / "lm.arpa"), 3)
    ours, theirs = ArpaLM.load(str(tmp_path / "lm.arpa")), kenlm.Model(str(tmp_path / "lm.arpa"))
    for s in (["the", "cat", "sat"], ["dog", "dog", "far", "away"], ["a"]):
        hist, total = ("<s>",), 0.0
        for w in s + ["</s>"]:
            total += ours.logp(hist, w)
            hist = (hist + (w,))[-2:]
        assert theirs.score(" ".join(s), bos=True, eos=True) * math.log(10) == pytest.approx(total, abs=1e-4)


def _posteriors(frames, V=len(phone_recognizer.PHONE_UNITS) + 1):
    """frames: list of {unit name or '<b>': prob} -> (T, V) log posteriors (the rest spread thinly)."""
    lp = np.full((len(frames), V), 1e-4)
    for t, d in enumerate(frames):
        for u, p in d.items():
            lp[t, phone_recognizer.BLANK if u == "<b>" else phone_recognizer.PHONE_UNITS.index(u) + 1] = p
    lp /= lp.sum(1, keepdims=True)
    return np.log(lp)


def test_the_phone_lm_corrects_an_ambiguous_phone(tmp_path):
    lex_path = tmp_path / "lex.txt"
    lex_path.write_text("CAT K AE1 T\nSAT S AE1 T\nKIT K IH1 T\n")
    lex = Lexicon.from_file(str(lex_path))
    stats = train_phone_lm(["cat sat", "sat cat", "cat", "sat", "cat cat sat"] * 20, lex,
                           str(tmp_path / "p.arpa"), order=3)
    assert stats["sentences"] == 100 and "skipped_oov" not in stats
    lm = ArpaLM.load(str(tmp_path / "p.arpa"))
    # "K ? T" with the vowel frame slightly more IH than AE, surrounded by silence and blanks
    frames = [{"SIL": 0.9}, {"K": 0.9}, {"<b>": 0.9}, {"IH": 0.5, "AE": 0.4}, {"<b>": 0.9}, {"T": 0.9},
              {"SIL": 0.9}]
    lp = _posteriors(frames)
    units = ("<blank>",) + tuple(phone_recognizer.PHONE_UNITS)
    sil = phone_recognizer.PHONE_UNITS.index("SIL") + 1
    no_lm = beam_search(lp, units, lm, silence=sil, lm_weight=0.0)
    with_lm = beam_search(lp, units, lm, silence=sil, lm_weight=1.0)
    assert [units[u] for u in no_lm] == ["K", "IH", "T"]
    assert [units[u] for u in with_lm] == ["K", "AE", "T"]
    labels = label_with_phone_lm(lp, lm, lm_weight=1.0)
    assert len(labels) == len(frames) and labels[0] == "SIL" and labels[-1] == "SIL"
    assert collapse(labels) == ["K", "AE", "T"]
    assert collapse(label_without_transcript(lp)) == ["K", "IH", "T"]
