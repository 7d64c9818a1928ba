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
import torch
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


def test_100hz_labels_take_a_random_offset_per_training_batch(mini_corpus, tmp_path):
    """The published forward_targets: every second 100 Hz label from offset 0 or 1, drawn per batch."""
    import shutil

    from fairseq.data import Dictionary

    from speechlm.data.speech_label_dataset import SpeechLabelDataset

    corpus = Path(mini_corpus)
    units = Dictionary.load(str(corpus / "dict.phn.txt"))
    # 100 Hz labels whose even frames are the 50 Hz phones and whose odd frames all say "odd" (one symbol)
    odd = units.symbols[-1]
    shutil.copy(corpus / "valid.tsv", tmp_path / "valid.tsv")
    lines = (corpus / "valid.phn").read_text().splitlines()
    (tmp_path / "valid.phn100").write_text("".join(" ".join(f"{p} {odd}" for p in ln.split()) + "\n" for ln in lines))
    kw = dict(label_rate=100, length_tolerance=0, max_sample_size=None, pad_audio=True)
    ds = SpeechLabelDataset(str(tmp_path / "valid.tsv"), str(tmp_path / "valid.phn100"), units,
                            random_label_offset=True, **kw)
    plain = SpeechLabelDataset(str(tmp_path / "valid.tsv"), str(tmp_path / "valid.phn100"), units, **kw)
    offsets = []
    for start in range(len(ds) - 1):
        ids = [start, start + 1]
        batch = ds.collater([ds[i] for i in ids])
        rows = [batch["target"][b, : batch["target_lengths"][b]] for b in range(len(ids))]
        even = [units.string(r).split() == lines[i].split() for r, i in zip(rows, ids)]
        all_odd = [set(units.string(r).split()) == {odd} for r in rows]
        assert all(even) or all(all_odd)  # one offset for the whole batch
        offsets.append(0 if all(even) else 1)
        assert batch["target_lengths"].tolist() == [len(ln.split()) for ln in (lines[i] for i in ids)]
        again = ds.collater([ds[i] for i in ids])
        assert torch.equal(again["target"], batch["target"])  # seeded: the same batch draws the same offset
    assert len(offsets) >= 4 and set(offsets) == {0, 1}
    # off (validation): always the even labels
    assert "label_odd" not in plain[0] and units.string(plain.get_label(0)).split() == lines[0].split()
