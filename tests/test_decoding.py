"""KenLM decoding through pyctcdecode with an ARPA model built here: the LM moves hypotheses toward in-LM words."""
import numpy as np
import pytest
import torch
from fairseq.data import Dictionary

from speechlm.decoding.ctc import KenLMDecoder, ViterbiDecoder, arpa_unigrams, load_kenlm, word_errors
from speechlm.decoding.ngram import write_arpa

pytest.importorskip("pyctcdecode")
pytest.importorskip("kenlm")


def _letters():
    d = Dictionary()  # <s> (index 0, the CTC blank as in speechlm_ctc), <pad>, </s>, <unk>
    for c in "|ABCDEFGHIJKLMNOPQRSTUVWXYZ'":
        d.add_symbol(c)
    return d


def _emissions(d, frames, blank):
    """frames: one dict per frame {symbol: prob}; '' is the blank. -> (T, V) log-probs."""
    p = np.full((len(frames), len(d)), 1e-3)
    for t, f in enumerate(frames):
        for sym, q in f.items():
            p[t, blank if sym == "" else d.index(sym)] = q
    p /= p.sum(1, keepdims=True)
    return torch.from_numpy(np.log(p)).float()


def _spell(words, confusions):
    """Frames for words: each letter then a blank, '|' between words; confusions {(word, i): {sym: p}}."""
    frames = []
    for w_i, w in enumerate(words):
        for i, c in enumerate(w):
            frames.append(confusions.get((w_i, i), {c: 0.9}))
            frames.append({"": 0.9})
        frames.append({"|": 0.9})
    return frames


def test_kenlm_beats_viterbi_on_acoustically_ambiguous_words(tmp_path):
    text = ["THE CAT SAT ON THE MAT", "A CAT SAT", "THE DOG SAT ON A LOG", "THE CAT RAN", "A DOG RAN"] * 20
    arpa = tmp_path / "lm.arpa"
    write_arpa([s.split() for s in text], str(arpa), order=3)
    assert set(arpa_unigrams(str(arpa))) == {w for s in text for w in s.split()}
    d = _letters()
    blank = d.bos()
    refs = ["THE CAT SAT", "THE DOG RAN"]
    # the acoustics favour a non-word by a little: K over C in CAT, R over D in DOG... and a wrong vowel
    cases = [
        _spell(refs[0].split(), {(1, 0): {"K": 0.55, "C": 0.45}}),
        _spell(refs[1].split(), {(1, 1): {"A": 0.5, "O": 0.4}, (2, 0): {"W": 0.5, "R": 0.45}}),
    ]
    viterbi = ViterbiDecoder(d, blank)
    lm = load_kenlm(str(arpa), lm_weight=1.0, word_score=0.0)
    kenlm = KenLMDecoder(d, blank, str(arpa), lm_weight=1.0, word_score=0.0, beam=20, language_model=lm)
    no_lm = KenLMDecoder(d, blank, str(arpa), lm_weight=0.0, word_score=0.0, beam=20, language_model=lm)
    hyps = {name: [dec.decode_words(_emissions(d, f, blank)) for f in cases]
            for name, dec in (("viterbi", viterbi), ("kenlm", kenlm), ("no_lm", no_lm))}
    assert hyps["viterbi"] == ["THE KAT SAT", "THE DAG WAN"]
    assert hyps["kenlm"] == refs  # the LM moves both toward in-LM words
    assert hyps["no_lm"] == hyps["viterbi"]  # weight 0: the beam search alone agrees with best path
    wer = {name: sum(word_errors(h, r)[0] for h, r in zip(hs, refs)) / 6 for name, hs in hyps.items()}
    assert wer["kenlm"] == 0.0 < wer["viterbi"] == pytest.approx(3 / 6)


def test_missing_lm_file_says_what_to_give(tmp_path):
    with pytest.raises(SystemExit, match="KenLM model not found"):
        load_kenlm(str(tmp_path / "nope.arpa"))


def test_unk_score_offset_keeps_a_strongly_heard_new_word_or_forbids_it(tmp_path):
    """A clearly spoken word outside the LM's words (LM weight 0: only the word list counts): a small offset
    (-1) spells it; a large penalty (-100, a lexicon-constrained search) replaces it by an in-list word."""
    text = ["THE CAT SAT", "THE DOG SAT", "A CAT RAN", "THE DOG RAN"] * 20
    arpa = tmp_path / "lm.arpa"
    write_arpa([s.split() for s in text], str(arpa), order=3)
    d = _letters()
    blank = d.bos()
    frames = _spell("THE COT SAT".split(), {(1, 1): {"O": 0.9, "A": 0.05}})
    lm = load_kenlm(str(arpa))
    hyps = {off: KenLMDecoder(d, blank, str(arpa), lm_weight=0.0, word_score=0.0, beam=20, language_model=lm,
                              unk_score_offset=off).decode_words(_emissions(d, frames, blank))
            for off in (-1.0, -100.0)}
    assert hyps[-1.0] == "THE COT SAT"
    assert hyps[-100.0] == "THE CAT SAT"
