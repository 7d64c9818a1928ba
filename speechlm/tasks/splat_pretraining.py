"""Task ``splat_pretraining``: the SPLAT speech module learns to reconstruct masked log-Mel frames.

Data: a directory with ``{split}.tsv``/``{split}.spk`` and the features of ``speechlm splat features``
(``{split}.fbank.npy``, ``{split}.fbank.len``, ``cmvn.npz``). The downstream/alignment tasks subclass
``SplatFbankTask`` and add their labels.
"""
import logging
import os
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from speechlm.data.fbank import SpeakerFeatures
from speechlm.data.splat_dataset import SplatFbankDataset
from speechlm.models.splat_speech import resolve_speech_architecture

logger = logging.getLogger(__name__)


@dataclass
class SplatFbankTaskConfig(FairseqDataclass):
    data: str = field(default=MISSING, metadata={"help": "directory with {split}.tsv, .spk and fbank features"})
    max_frames: Optional[int] = field(
        default=None, metadata={"help": "longest utterance in 10 ms frames (cropped or skipped)"}
    )
    min_frames: int = field(default=8, metadata={"help": "shorter utterances are skipped"})
    seed: int = field(default=II("common.seed"), metadata={"help": "seed of the random crops (common.seed)"})


class SplatFbankTask(FairseqTask):
    """Common part of the SPLAT tasks: fbank datasets; no dictionaries."""

    crop_long_utterances = False

    def __init__(self, cfg):
        super().__init__(cfg)
        if not os.path.isdir(cfg.data):
            raise FileNotFoundError(f"task.data={cfg.data}: no such directory")

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        return cls(cfg)

    def split_path(self, split: str, ext: str) -> str:
        return os.path.join(self.cfg.data, f"{split}.{ext}")

    def extras(self, split: str, num_rows: int):
        """name -> (values per manifest row, pad or None); subclasses add their labels."""
        return {}

    def row_indices(self, split: str, num_rows: int):
        return None

    def load_dataset(self, split: str, epoch=1, combine=False, **kwargs):
        feats = SpeakerFeatures(self.cfg.data, split)
        ds = SplatFbankDataset(
            feats,
            indices=self.row_indices(split, len(feats)),
            max_frames=self.cfg.max_frames,
            min_frames=self.cfg.min_frames,
            crop=self.crop_long_utterances,
            shuffle=True,
            extras=self.extras(split, len(feats)),
            seed=self.cfg.seed,
        )
        if ds.num_skipped:
            logger.warning(f"{split}: skipped {ds.num_skipped} utterances outside "
                           f"[{self.cfg.min_frames}, {self.cfg.max_frames}] frames")
        logger.info(f"{split}: {len(ds)} utterances")
        self.datasets[split] = ds

    @property
    def source_dictionary(self):
        return None

    @property
    def target_dictionary(self):
        return None

    def build_model(self, cfg, from_checkpoint=False):
        resolve_speech_architecture(cfg)
        return super().build_model(cfg, from_checkpoint)

    def max_positions(self):
        return self.cfg.max_frames or 10**9


@dataclass
class SplatPretrainingConfig(SplatFbankTaskConfig):
    max_frames: Optional[int] = field(
        default=1500, metadata={"help": "longer utterances are randomly cropped to this many frames"}
    )


@register_task("splat_pretraining", dataclass=SplatPretrainingConfig)
class SplatPretrainingTask(SplatFbankTask):
    crop_long_utterances = True
