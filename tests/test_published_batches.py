"""``task.speech_batches_per_update``: the published LibriSpeech batches (two speech buckets + one text batch).

The published sampler (microsoft/unilm ``speechlm/data/multimodal_corpus_dataset.py``) appends the
speech batch list twice and joins ``S1[i] + text[i] + S2[i]``; with ``pad_audio: false`` the joined speech
is cropped to its shortest clip. Here on the mini corpus: with the option on, an epoch holds every
utterance twice and every update two speech buckets and one text batch; off, once and one.
"""
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from test_pretrain import MAX_TOKENS, batches, make_task, write_text_dir

from speechlm.data.manifest import num_frames_50hz
from speechlm.errors import UserError


@pytest.fixture(scope="module")
def text_dir(mini_corpus, tmp_path_factory):
    return write_text_dir(Path(mini_corpus), tmp_path_factory.mktemp("text"))


@pytest.mark.parametrize("per_update", [1, 2])
def test_an_epoch_holds_each_utterance_per_update_times(mini_corpus, text_dir, per_update):
    task = make_task(mini_corpus, text_dir, speech_batches_per_update=per_update, pad_audio=False)
    task.load_dataset("train")
    ds = task.dataset("train")
    steps = batches(task, "train")
    seen = Counter(i for s in steps for i in s["speech"]["id"].tolist())
    assert len(seen) == len(ds.speech) and set(seen.values()) == {per_update}

    # the structure of every update: `per_update` speech buckets of the length batcher + one text batch
    indices = ds.ordered_indices()
    ds.set_epoch(1)
    buckets = [tuple(int(i) for i in b) for b in ds.speech.batch_by_size(indices, max_tokens=MAX_TOKENS)]
    keys = [k for (k,) in ds.batch_by_size(indices, max_tokens=MAX_TOKENS)]
    assert len(keys) == len(buckets)  # updates per epoch: one per speech bucket either way
    second = []
    for (speech_ids, text_ids), first in zip(keys, buckets):
        assert speech_ids[: len(first)] == first
        rest = speech_ids[len(first):]
        if per_update == 1:
            assert rest == ()
        else:
            assert rest in buckets
            second.append(buckets.index(rest))
        assert text_ids and sum(ds.text.sizes[list(text_ids)]) <= MAX_TOKENS // 320
    if per_update == 2:
        assert sorted(second) == list(range(len(buckets)))  # S2 is a reshuffled copy of the epoch's buckets
        assert second != list(range(len(buckets)))

    # pad_audio: false crops the joined speech to its shortest clip (the published cross-bucket crop)
    sizes = ds.speech.sizes_capped
    for s in steps:
        ids = s["speech"]["id"].tolist()
        S = s["speech"]["net_input"]["source"].size(1)
        assert S == min(sizes[ids]) and s["speech"]["target"].shape == (len(ids), num_frames_50hz(S))
        assert s["speech"]["net_input"]["padding_mask"] is None
        assert s["text"] is not None and s["text"]["net_input"]["units"].dim() == 2


def test_validation_keeps_one_bucket_and_bad_values_are_refused(mini_corpus, text_dir):
    task = make_task(mini_corpus, text_dir, speech_batches_per_update=2)
    task.load_dataset("valid")
    seen = Counter(i for s in batches(task, "valid") for i in s["speech"]["id"].tolist())
    assert set(seen.values()) == {1}
    bad = make_task(mini_corpus, text_dir, speech_batches_per_update=3)
    with pytest.raises(UserError, match="speech_batches_per_update=3"):
        bad.load_dataset("train")
    assert np.all(task.dataset("valid").speech.sizes > 0)
