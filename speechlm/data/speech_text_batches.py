"""Exactly one speech batch and one text batch per step, through fairseq's own batch iterator.

``SpeechTextBatchDataset.batch_by_size`` buckets the speech by length with fairseq's
``batch_by_size`` (``max_tokens`` in samples) and the text the same way with its own budget
(``text_max_tokens``, in unit frames), then pairs every speech batch with one text batch (text
batches shuffled per epoch with ``seed + epoch`` and cycled when there are fewer of them). Each
"batch" fairseq sees is one key ``(speech indices, text indices)``, so its ``EpochBatchIterator``
shuffles, shards across ranks (every rank gets different pairs), counts updates and resumes from
a checkpoint exactly as for any fairseq dataset. The epoch is defined by the speech.

``speech_batches_per_update=2`` builds the batches of the published sampler (microsoft/unilm
``speechlm/data/multimodal_corpus_dataset.py``, whose corpus loop appends the speech batch list a
second time, reshuffled, and joins ``S1[i] + text[i] + S2[i]``): every update gets the speech of two
length buckets, ``S1[i]`` and ``S2[i]`` from a second, independently shuffled copy of the epoch's
speech batches, collated together (so with ``pad_audio: false`` all of them are cropped to the
shortest clip of the two buckets, as there), and one text batch; each utterance is seen twice per epoch.
"""
import logging
from typing import Optional

import numpy as np
from fairseq.data import FairseqDataset

from speechlm.data.manifest import FRAME_SHIFT_SAMPLES

logger = logging.getLogger(__name__)


def default_text_max_tokens(speech_max_tokens: int, ratio: float = 1.0) -> int:
    """Text budget in unit frames: the speech budget in 20 ms frames (samples / 320) times ``ratio``."""
    return max(1, int(speech_max_tokens / FRAME_SHIFT_SAMPLES * ratio))


class SpeechTextBatchDataset(FairseqDataset):
    """Wraps a ``SpeechLabelDataset`` and an optional ``UnitTextDataset`` (None: speech only).

    Collated sample: ``{"speech": speech batch, "text": text batch or None, "nsentences", "ntokens"}``.
    """

    def __init__(self, speech, text=None, text_max_tokens_ratio: float = 1.0,
                 text_max_tokens: Optional[int] = None, seed: int = 1, speech_batches_per_update: int = 1):
        if speech_batches_per_update not in (1, 2):
            raise ValueError(f"speech_batches_per_update={speech_batches_per_update}: must be 1 or 2")
        self.speech, self.text = speech, text
        self.speech_batches_per_update = speech_batches_per_update
        self.text_max_tokens_ratio, self.text_max_tokens = text_max_tokens_ratio, text_max_tokens
        self.seed, self.epoch = seed, 1
        self.sizes = speech.sizes

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.speech.set_epoch(epoch)
        if self.text is not None:
            self.text.set_epoch(epoch)

    def __len__(self):
        return len(self.speech)

    def num_tokens(self, index):
        return self.speech.num_tokens(index)

    def size(self, index):
        return self.speech.size(index)

    def num_tokens_vec(self, indices):
        return self.speech.num_tokens_vec(indices)

    def ordered_indices(self):
        return self.speech.ordered_indices()

    @property
    def supports_prefetch(self):
        return False

    def batch_by_size(self, indices, max_tokens=None, max_sentences=None, required_batch_size_multiple=1):
        speech_batches = self.speech.batch_by_size(
            indices, max_tokens=max_tokens, max_sentences=max_sentences,
            required_batch_size_multiple=required_batch_size_multiple,
        )
        n_batched = sum(len(b) for b in speech_batches)
        if n_batched < len(indices):  # fairseq rounds batch sizes down and leaves the rest out
            logger.warning(
                f"{len(indices) - n_batched} of {len(indices)} utterances are left out of this epoch's "
                f"batches by dataset.required_batch_size_multiple={required_batch_size_multiple}; set it to 1 "
                "to use every utterance"
            )
        rng = np.random.RandomState((self.seed + self.epoch) % 2**32)
        # seeded here, not by fairseq's numpy_seed: the pairing must be the same after a resume
        if self.speech_batches_per_update == 2:
            second = rng.permutation(len(speech_batches))
            speech_batches = [np.concatenate([b, speech_batches[j]]) for b, j in zip(speech_batches, second)]
        if self.text is None:
            return [[(tuple(int(i) for i in b), ())] for b in speech_batches]
        budget = self.text_max_tokens or (
            default_text_max_tokens(max_tokens, self.text_max_tokens_ratio) if max_tokens else None
        )
        if budget is not None and self.text.sizes.max() > budget:
            # a sentence longer than the budget still gets a batch of its own
            budget = int(self.text.sizes.max())
        text_indices = np.lexsort([rng.permutation(len(self.text)), self.text.sizes])
        text_batches = self.text.batch_by_size(text_indices, max_tokens=budget, max_sentences=max_sentences)
        order = rng.permutation(len(text_batches))
        pairs = []
        for k, b in enumerate(speech_batches):
            t = text_batches[order[k % len(order)]]
            pairs.append([(tuple(int(i) for i in b), tuple(int(i) for i in t))])
        return pairs

    def __getitem__(self, key):
        speech_ids, text_ids = key
        speech = [self.speech[i] for i in speech_ids]
        text = [self.text[i] for i in text_ids] if self.text is not None else []
        return speech, text

    def collater(self, samples):
        if not samples:
            return {}
        assert len(samples) == 1, "SpeechTextBatchDataset batches hold exactly one (speech, text) key"
        speech, text = samples[0]
        s = self.speech.collater(speech)
        t = self.text.collater(text) if self.text is not None and text else None
        return {
            "speech": s,
            "text": t,
            "nsentences": s.get("nsentences", 0),
            "ntokens": s.get("ntokens", 0),
        }
