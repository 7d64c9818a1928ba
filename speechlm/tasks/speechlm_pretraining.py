"""Task ``speechlm_pretraining``: SpeechLM pre-training on speech + unpaired text, or CTC fine-tuning.

Pre-training (``fine_tuning: false``): ``data/{split}.tsv`` with frame units ``data/{split}.{label}``
(``labels: [phn]`` or ``[km]``) and ``data/dict.{label}.txt``; optional unpaired text in
``text_data`` (``{text_split}.{label}-ltr.{label}/.ltr.{bin,idx}``, ``dict.ltr.txt``). Every update
gets one speech batch (``speech_batches_per_update: 2``: two, as the published LibriSpeech runs) and one
text batch (``speechlm.data.speech_text_batches``); the text
budget is ``max_tokens / 320 * text_max_tokens_ratio`` unit frames. ``text_data`` empty = speech only.

Fine-tuning (``fine_tuning: true``): ``data/{split}.ltr`` letters and ``data/dict.ltr.txt``;
``target_dictionary`` is the letters and batches are plain padded speech batches.
"""
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np
import torch
import torch.distributed as dist
from fairseq.data import Dictionary
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from speechlm.data.speech_label_dataset import SpeechLabelDataset
from speechlm.data.speech_text_batches import SpeechTextBatchDataset
from speechlm.data.unit_text_dataset import load_text_dataset
from speechlm.errors import UserError

logger = logging.getLogger(__name__)


@dataclass
class SpeechLMPretrainingConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "speech dir: {split}.tsv, labels, dict.{label}.txt"})
    labels: List[str] = field(
        default_factory=lambda: ["phn"], metadata={"help": "frame unit label extension, e.g. [phn] or [km]"}
    )
    label_rate: int = field(default=50, metadata={"help": "frame rate of the unit labels, 50 or 100 Hz"})
    label_length_tolerance: int = field(
        default=2, metadata={"help": "frames a label line may differ from the audio's 50 Hz frames (else error)"}
    )
    text_data: Optional[str] = field(
        default=None, metadata={"help": "dir of the binarized unpaired text; empty = speech only"}
    )
    text_split: str = field(default="train", metadata={"help": "text split used for training"})
    valid_text_split: str = field(default="valid", metadata={"help": "text split used for validation"})
    text_max_tokens_ratio: float = field(
        default=1.0, metadata={"help": "text budget = max_tokens / 320 * this (unit frames per batch)"}
    )
    fine_tuning: bool = field(default=False, metadata={"help": "CTC fine-tuning/decoding on {split}.ltr"})
    sample_rate: int = field(default=16000, metadata={"help": "audio sample rate (16 kHz only)"})
    normalize: bool = field(default=False, metadata={"help": "zero-mean unit-variance waveform (Large models)"})
    pad_audio: bool = field(default=True, metadata={"help": "pad batches to the longest (else crop to the shortest)"})
    max_sample_size: Optional[int] = field(
        default=250000,
        metadata={"help": "pre-training: crop utterances longer than this (samples); fine-tuning never crops "
                          "(the letter targets cannot follow a crop)"},
    )
    min_sample_size: int = field(default=32000, metadata={"help": "drop utterances shorter than this (samples)"})
    random_crop: bool = field(default=True, metadata={"help": "random crop offset (else crop the start)"})
    seed: int = field(default=II("common.seed"), metadata={"help": "seed of crops and text pairing"})
    train_subset: str = field(
        default=II("dataset.train_subset"),
        metadata={"help": "the training split (from dataset.train_subset): shuffled and randomly cropped"},
    )
    allow_unk_labels: bool = field(
        default=False,
        metadata={"help": "map label symbols outside the dictionary to <unk> (default: an error naming the line)"},
    )
    speech_batches_per_update: int = field(
        default=1,
        metadata={"help": "speech batches per update in training: 1, or 2 as the published sampler builds them "
                          "for LibriSpeech (two length buckets joined with one text batch; each utterance twice "
                          "per epoch; with pad_audio=false both cropped to their shortest clip)"},
    )
    rebuild_batches: bool = field(
        default=True, metadata={"help": "re-pair speech and text batches every epoch"}
    )


@contextlib.contextmanager
def step_seed(*keys: int):
    """torch's RNG (the CPU's and the current GPU's) seeded from ``keys`` inside the block, restored after."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def data_parallel_rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def data_parallel_world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


@register_task("speechlm_pretraining", dataclass=SpeechLMPretrainingConfig)
class SpeechLMPretrainingTask(FairseqTask):
    cfg: SpeechLMPretrainingConfig

    def __init__(self, cfg: SpeechLMPretrainingConfig, unit_dictionary, letter_dictionary):
        super().__init__(cfg)
        self.unit_dictionary, self.letter_dictionary = unit_dictionary, letter_dictionary
        self._step = (-1, -1)  # (update, micro-batch) of the last train_step

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
        """fairseq's step with torch's RNG seeded by (seed, update, global batch): the masks, swap spans,
        layerdrop and dropout differ across ranks and across the micro-batches of an update (fairseq seeds
        every rank with seed + update alone, so ranks drew the same for same-shaped batches), and a rerun
        or a resume from a checkpoint draws the same again. The global batch of micro-batch m on rank r of W
        is ``m * W + r``, the index of the batch it trains on among the update's (fairseq's iterator gives
        rank r the batches r, r + W, ...): so W ranks draw what one process with ``update_freq`` W draws."""
        update, micro = self._step
        self._step = (update_num, micro + 1 if update == update_num else 0)
        seed = self.cfg.seed if self.cfg.seed is not None else 1
        global_batch = self._step[1] * data_parallel_world_size() + data_parallel_rank()
        # the 0 keeps one process's draws as they were when the keys were (seed, update, rank, micro-batch)
        with step_seed(seed, update_num, 0, global_batch):
            return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad, **kwargs)

    @staticmethod
    def _load_dict(path: str, what: str) -> Dictionary:
        from speechlm.data.readers import load_dictionary

        return load_dictionary(path, what)

    @classmethod
    def setup_task(cls, cfg: SpeechLMPretrainingConfig, **kwargs):
        if cfg.sample_rate != 16000:
            raise UserError(f"task.sample_rate={cfg.sample_rate}: SpeechLM models take 16 kHz audio")
        if cfg.fine_tuning:
            letters = cls._load_dict(os.path.join(cfg.data, "dict.ltr.txt"), "letter")
            return cls(cfg, None, letters)
        if len(cfg.labels) != 1:
            raise UserError(f"task.labels={list(cfg.labels)}: SpeechLM pre-trains on exactly one unit label")
        unit = cfg.labels[0]
        units = cls._load_dict(os.path.join(cfg.data, f"dict.{unit}.txt"), f"{unit} unit")
        letters = None
        if cfg.text_data:
            text_units = cls._load_dict(os.path.join(cfg.text_data, f"dict.{unit}.txt"), f"text {unit} unit")
            if text_units.symbols != units.symbols:
                raise UserError(
                    f"{cfg.text_data}/dict.{unit}.txt differs from {cfg.data}/dict.{unit}.txt; the text must "
                    "be binarized with the speech side's unit dictionary (speechlm binarize --unit-dict)"
                )
            letters = cls._load_dict(os.path.join(cfg.text_data, "dict.ltr.txt"), "letter")
        else:
            logger.warning(
                "task.text_data is not set: speech-only pre-training (the no-text ablation, UMLM only); "
                "give task.text_data=TEXT_DIR for SpeechLM's UCTC on unpaired text"
            )
            ltr = os.path.join(cfg.data, "dict.ltr.txt")
            letters = cls._load_dict(ltr, "letter") if os.path.isfile(ltr) else None
        logger.info(f"unit dictionary: {len(units)} types; letters: {len(letters) if letters else 0} types")
        return cls(cfg, units, letters)

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return self.letter_dictionary if self.cfg.fine_tuning else self.unit_dictionary

    @property
    def dictionaries(self):
        return [self.target_dictionary]

    def max_positions(self):
        return None

    def get_batch_iterator(self, dataset, max_tokens=None, max_positions=None, **kwargs):
        """Nothing is skipped for its length: pre-training crops utterances to
        ``min(max_sample_size, max_tokens)`` (labels follow the crop); a CTC utterance (which cannot be
        cropped) longer than ``max_tokens`` gets a batch of its own (``SpeechLabelDataset.batch_by_size``)."""
        speech = getattr(dataset, "speech", dataset)
        if max_tokens and isinstance(speech, SpeechLabelDataset):
            if speech.frame_labels and speech.shuffle:  # training
                speech.max_sample_size = min(speech.max_sample_size, int(max_tokens))
            max_positions = None  # fairseq's trainer filters by max_tokens: would skip long utterances
        return super().get_batch_iterator(dataset, max_tokens=max_tokens, max_positions=max_positions, **kwargs)

    def _speech_dataset(self, split: str, train: bool) -> SpeechLabelDataset:
        label = "ltr" if self.cfg.fine_tuning else self.cfg.labels[0]
        return SpeechLabelDataset(
            os.path.join(self.cfg.data, f"{split}.tsv"),
            os.path.join(self.cfg.data, f"{split}.{label}"),
            self.letter_dictionary if self.cfg.fine_tuning else self.unit_dictionary,
            frame_labels=not self.cfg.fine_tuning,
            label_rate=self.cfg.label_rate,
            length_tolerance=self.cfg.label_length_tolerance,
            max_sample_size=None if self.cfg.fine_tuning else self.cfg.max_sample_size,
            min_sample_size=self.cfg.min_sample_size if train else 0,
            pad_audio=self.cfg.pad_audio or self.cfg.fine_tuning,
            normalize=self.cfg.normalize,
            random_crop=self.cfg.random_crop and train,
            shuffle=train,
            seed=self.cfg.seed,
            allow_unk=getattr(self.cfg, "allow_unk_labels", False),
            random_label_offset=train,  # 100 Hz labels: the published per-batch offset 0 or 1 (training only)
        )

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        train = split == self.cfg.train_subset
        speech = self._speech_dataset(split, train)
        if self.cfg.fine_tuning:
            self.datasets[split] = speech
            return
        text = None
        if self.cfg.text_data:
            text_split = self.cfg.text_split if train else self.cfg.valid_text_split
            text = load_text_dataset(
                self.cfg.text_data, text_split, self.cfg.labels[0], self.unit_dictionary,
                self.letter_dictionary, shuffle=train, unit_eos=True,
            )
        per_update = getattr(self.cfg, "speech_batches_per_update", 1)
        if per_update not in (1, 2):
            raise UserError(f"task.speech_batches_per_update={per_update}: use 1, or 2 (the published "
                            "LibriSpeech batches)")
        self.datasets[split] = SpeechTextBatchDataset(
            speech, text, text_max_tokens_ratio=self.cfg.text_max_tokens_ratio, seed=self.cfg.seed,
            speech_batches_per_update=per_update if train else 1,  # validation sees each utterance once
        )
        logger.info(f"{split}: {len(speech)} utterances, {len(text) if text is not None else 0} text sentences")
