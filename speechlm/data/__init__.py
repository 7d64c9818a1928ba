"""Datasets and readers (no corpus building: that is ``speechlm.corpora``).

- ``readers``: the one reader of manifests, audio files and label files (errors name file and line);
- ``manifest``: the audio conventions (16 kHz, 50/100 Hz frame counts) and the manifest writer;
- ``speech_label_dataset``, ``speech_text_batches``, ``unit_text_dataset``: SpeechLM pre-training and
  CTC fine-tuning data; ``text_to_unit_dataset``: the text->unit model's data;
- ``fbank``, ``splat_dataset``: SPLAT's log-Mel features and datasets.
"""
