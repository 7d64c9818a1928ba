"""Corpora: what synthesizes or prepares data on disk (not datasets; those are in ``speechlm.data``).

- ``mini``: the embedded English mini corpus (synthesized KJV sentences) and its checker;
- ``synth``: offline speech synthesis with true phone/word alignments (espeak-ng, flite);
- ``st``, ``st_synthetic``: speech-translation data (fairseq ``speech_to_text`` TSV) and its synthetic
  target language;
- ``slu``: synthesized SLU corpora for SPLAT's downstream tasks (intents, spoken QA).
"""
