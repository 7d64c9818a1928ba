"""Nothing is dropped silently by batching (issue 13): the training configs set
``required_batch_size_multiple: 1``, and a multiple that leaves utterances out says how many."""
import logging
from pathlib import Path

import numpy as np
import pytest
import yaml
from omegaconf import OmegaConf

import speechlm  # noqa: F401
from speechlm.tasks.speechlm_pretraining import SpeechLMPretrainingConfig, SpeechLMPretrainingTask

REPO = Path(__file__).resolve().parents[1]
TRAINING_CONFIGS = sorted(
    p for p in (REPO / "examples").rglob("*.yaml")
    if "dataset" in (yaml.safe_load(p.read_text()) or {}) and "decode" not in p.parts
)


def test_there_are_training_configs_to_check():
    names = {p.name for p in TRAINING_CONFIGS}
    assert {"speechlm_tiny.yaml", "speechlm_ctc_tiny.yaml", "speechlm_p_base_librispeech.yaml"} <= names


@pytest.mark.parametrize("path", TRAINING_CONFIGS, ids=lambda p: str(p.relative_to(REPO / "examples")))
def test_every_training_config_keeps_every_utterance(path):
    assert yaml.safe_load(path.read_text())["dataset"].get("required_batch_size_multiple") == 1, path


def epoch_ids(task, split, multiple):
    itr = task.get_batch_iterator(task.dataset(split), max_tokens=320000, seed=1, disable_iterator_cache=True,
                                  required_batch_size_multiple=multiple)
    return sorted(i for s in itr.next_epoch_itr(shuffle=False) if s for i in s["speech"]["id"].tolist())


def test_a_batch_multiple_that_drops_utterances_says_so(mini_corpus, caplog):
    cfg = OmegaConf.structured(SpeechLMPretrainingConfig(
        data=str(mini_corpus), seed=1, train_subset="train", min_sample_size=8000, max_sample_size=80000))
    task = SpeechLMPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    n = len(task.dataset("train").speech)
    assert epoch_ids(task, "train", 1) == list(range(n))
    with caplog.at_level(logging.WARNING):
        seen = epoch_ids(task, "train", 8)
    assert len(seen) < n, "the mini corpus no longer shows fairseq's rounding; pick another multiple"
    assert f"{n - len(seen)} of {n} utterances are left out" in caplog.text
    assert "required_batch_size_multiple=8; set it to 1" in caplog.text


def test_long_utterances_are_cropped_in_training_and_batched_alone_elsewhere(mini_corpus):
    """max_tokens below the longest utterance: fairseq would skip it (training) or stop with "Sentences
    lengths should not exceed max_tokens" (validation, infer); here nothing is skipped."""
    cfg = OmegaConf.structured(SpeechLMPretrainingConfig(
        data=str(mini_corpus), seed=1, train_subset="train", min_sample_size=0, max_sample_size=None))
    task = SpeechLMPretrainingTask.setup_task(cfg)
    task.load_dataset("train")
    task.load_dataset("valid")
    for split, train in (("train", True), ("valid", False)):
        speech = task.dataset(split).speech
        max_tokens = int(np.median(speech.sizes))
        itr = task.get_batch_iterator(task.dataset(split), max_tokens=max_tokens, seed=1,
                                      max_positions=max_tokens, disable_iterator_cache=True)
        ids, widths = [], []
        for s in itr.next_epoch_itr(shuffle=False):
            ids += s["speech"]["id"].tolist()
            widths.append((len(s["speech"]["id"]), s["speech"]["net_input"]["source"].shape[1]))
        assert sorted(ids) == list(range(len(speech))), split
        if train:  # cropped: no batch is wider than max_tokens
            assert max(w for _, w in widths) <= max_tokens
        else:  # whole: the long ones alone in their batch
            long = [w for b, w in widths if w > max_tokens]
            assert long and all(b == 1 for b, w in widths if w > max_tokens)
            assert sorted(long) == sorted(int(n) for n in speech.sizes if n > max_tokens)
