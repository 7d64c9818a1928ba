"""Unpaired speech -> words -> frame-level phones: lexicon + word n-gram decoding of the phone posteriors.

What the SpeechLM paper's Kaldi tokenizer does for unpaired speech, without Kaldi: the recognizer's CTC
phone posteriors are decoded with a lexicon (a prefix tree of the words' phones) and a word n-gram LM
estimated from the unpaired text (``speechlm ngram TEXT``), by flashlight-text's ``LexiconDecoder`` (the
decoder behind torchaudio's ``ctc_decoder``; KenLM inside). The decoded words are then force-aligned to the
frames exactly like a transcript (``phone_alignment.label_with_transcript``: ``SIL`` optional between
words), so every frame gets a phone (or, with a Kaldi-inventory lexicon, a position-dependent phone).

The vocabulary is the LM's unigrams that the lexicon can pronounce (one pronunciation per word); a word it
cannot pronounce cannot be decoded. Scores: ``lm_weight * log10 P_lm + word_score`` per word, plus the CTC
log posteriors; ``sil_score`` is added for each silence frame run.
"""
import math
from typing import List, Set

import numpy as np

from speechlm.tokenizers.lexicon import SIL, Lexicon
from speechlm.tokenizers.phone_recognizer import BLANK, PHONE_UNITS, base_phone

SPECIAL_WORDS = ("<s>", "</s>", "<unk>")


def arpa_unigrams(path: str) -> Set[str]:
    """The words of an ARPA file's 1-gram section (``<s>``, ``</s>``, ``<unk>`` left out)."""
    words, section = set(), False
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            line = line.strip()
            if line == "\\1-grams:":
                section = True
            elif section and line.startswith("\\"):
                return words
            elif section and line:
                parts = line.split()
                if len(parts) < 2:
                    raise ValueError(f"{path}:{lineno}: expected 'logprob word [backoff]' in the 1-grams")
                if parts[1] not in SPECIAL_WORDS:
                    words.add(parts[1])
    if not section:
        raise ValueError(f"{path}: no \\1-grams: section; not an ARPA file (make one with `speechlm ngram`)")
    return words


class WordDecoder:
    """``words(log_probs (T, 41)) -> [word]`` and ``label(log_probs) -> [phone per frame]``."""

    def __init__(self, arpa: str, lexicon: Lexicon, lm_weight: float = 2.0, word_score: float = 0.0,
                 beam: int = 50, beam_threshold: float = 25.0, sil_score: float = 0.0):
        from flashlight.lib.text.decoder import (
            CriterionType,
            KenLM,
            LexiconDecoder,
            LexiconDecoderOptions,
            SmearingMode,
            Trie,
        )
        from flashlight.lib.text.dictionary import Dictionary

        self.lexicon = lexicon
        self.prons = {}
        for w in sorted(arpa_unigrams(arpa)):
            p = lexicon.phones(w)
            if p:
                self.prons[w] = p
        if not self.prons:
            raise ValueError(f"{arpa}: none of its words is in the lexicon ({lexicon.source})")
        self.words_dict = Dictionary(list(self.prons) + list(SPECIAL_WORDS))
        self.words_dict.set_default_index(self.words_dict.get_index("<unk>"))
        self.lm = KenLM(arpa, self.words_dict)
        n_tokens = len(PHONE_UNITS) + 1
        sil = PHONE_UNITS.index(SIL) + 1
        trie = Trie(n_tokens, sil)
        start = self.lm.start(False)
        for w, p in self.prons.items():
            i = self.words_dict.get_index(w)
            trie.insert([PHONE_UNITS.index(base_phone(x)) + 1 for x in p], i, self.lm.score(start, i)[1])
        trie.smear(SmearingMode.MAX)
        opts = LexiconDecoderOptions(beam_size=beam, beam_size_token=n_tokens, beam_threshold=beam_threshold,
                                     lm_weight=lm_weight, word_score=word_score, unk_score=-math.inf,
                                     sil_score=sil_score, log_add=False, criterion_type=CriterionType.CTC)
        self._trie = trie  # the decoder keeps a reference; so do we
        self.decoder = LexiconDecoder(opts, trie, self.lm, sil, BLANK, self.words_dict.get_index("<unk>"), [],
                                      False)

    def words(self, log_probs: np.ndarray) -> List[str]:
        e = np.ascontiguousarray(log_probs, dtype=np.float32)
        best = self.decoder.decode(e.ctypes.data, e.shape[0], e.shape[1])[0]
        return [self.words_dict.get_entry(i) for i in best.words if i >= 0]

    def label(self, log_probs: np.ndarray) -> List[str]:
        """One phone per frame: the decoded words force-aligned; the argmax where they do not fit."""
        from speechlm.tokenizers.phone_alignment import label_with_transcript, label_without_transcript

        try:
            return label_with_transcript(log_probs, [self.prons[w] for w in self.words(log_probs)])
        except ValueError:
            return label_without_transcript(log_probs)
