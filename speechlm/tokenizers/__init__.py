"""Speech and text -> discrete units, and the files they produce.

- ``lexicon``: the phone inventory, the text normalizer, the CMU dictionary and lexicon files;
- ``phonemizer``, ``upsample``: text -> upsampled phone units (+ letters); ``binarize``: -> fairseq
  indexed datasets;
- ``features``, ``kmeans``: speech -> hidden units; ``phone_*``: speech -> phone units (``phone_recognizer``
  the model, ``phone_training``, ``phone_alignment``, ``phone_lm`` for unpaired speech, ``phone_labelling``
  a manifest -> ``.phn``, ``phone_scoring``);
- ``text_to_unit``: text -> hidden units with a trained ``text_to_unit`` model;
- ``shards``: the ``--nshard/--rank`` ranges and the merge of shard files.
"""
