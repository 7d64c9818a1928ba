"""Training the phone recognizer: a dataset streamed from disk and a CTC loop that validates and resumes.

- ``PhoneCtcDataset``: one item per manifest row (transcribed speech), ``(features (T, D) float32, targets)``.
  It holds the manifest (paths and sample counts) and the target indices only: each item's audio is read
  through the checked reader (``Manifest.audio``) and featurized when the batch needs it, or, with
  ``cache_dir`` (for costly features such as a checkpoint's layer), featurized once into ``cache_dir/ROW.npy``
  and memory-mapped from there afterwards. Nothing grows with the corpus but the index lists.
- ``train_recognizer``: CTC with Adam and a one-cycle schedule; SpecAugment-style time and channel masks
  on the inputs (``TrainingConfig``); after every epoch the valid CTC loss and greedy PER are logged and
  ``train_dir/checkpoint_last.pt`` (model, optimizer, schedule, RNG, history) is written atomically.
  Run again with the same ``train_dir`` and settings, it resumes after the last finished epoch, and the result
  equals that of an uninterrupted run (the batch order is a function of the seed and the epoch).
"""
import logging
import math
import os
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from speechlm.atomic import atomic_write
from speechlm.decoding.ctc import greedy_ctc
from speechlm.tokenizers.phone_recognizer import (
    BLANK,
    PHONE_UNITS,
    PhoneRecognizer,
    PhoneRecognizerConfig,
    base_phone,
    ctc_targets,
    transcript_phones,
)

logger = logging.getLogger(__name__)

CHECKPOINT_LAST = "checkpoint_last.pt"


class PhoneCtcDataset:
    """Rows ``rows`` of a manifest with their CTC targets; features computed (or read from the cache) per item.

    ``featurize(wav) -> (frames, dim)`` float32 (``phone_recognizer.make_featurizer``)."""

    def __init__(self, manifest, rows: Sequence[int], targets: Sequence[Sequence[int]],
                 featurize: Callable[[np.ndarray], np.ndarray], cache_dir: Optional[str] = None):
        if len(rows) != len(targets):
            raise ValueError(f"{len(rows)} rows but {len(targets)} target sequences")
        self.manifest = manifest
        self.rows = list(rows)
        self.targets = [list(t) for t in targets]
        self.featurize = featurize
        self.cache_dir = cache_dir
        if cache_dir:
            os.makedirs(cache_dir, exist_ok=True)

    @classmethod
    def from_split(cls, corpus: str, split: str, lexicon, featurize, cache_dir: Optional[str] = None):
        """``corpus/split.tsv`` + ``split.wrd`` through ``lexicon``. Returns ``(dataset, skipped)`` with
        ``skipped`` the ``(line in split.wrd, missing words)`` of transcripts with words not in the lexicon."""
        from speechlm.data.readers import Manifest, load_labels

        manifest = Manifest.load(os.path.join(corpus, f"{split}.tsv"))
        lines = load_labels(os.path.join(corpus, f"{split}.wrd"), len(manifest), manifest.path)
        rows, targets, skipped = [], [], []
        for i, line in enumerate(lines):
            wp = transcript_phones(line.split(), lexicon)
            if wp is None:
                skipped.append((i + 1, [w for w in line.split() if lexicon.get(w) is None]))
            else:
                rows.append(i)
                targets.append(ctc_targets(wp))
        return cls(manifest, rows, targets, featurize, cache_dir), skipped

    @classmethod
    def from_frame_labels(cls, corpus: str, split: str, phn: str, featurize, cache_dir: Optional[str] = None):
        """``corpus/split.tsv`` with targets from frame-level phone labels (``phone-units label`` output, one
        line per row): each line's phone runs, ``SIL`` dropped inside and put at both edges (as
        ``ctc_targets`` does for a transcript). For self-training on unpaired speech."""
        from speechlm.data.readers import Manifest, load_labels
        from speechlm.tokenizers.phone_scoring import collapse

        manifest = Manifest.load(os.path.join(corpus, f"{split}.tsv"))
        rows, targets = [], []
        for i, line in enumerate(load_labels(phn, len(manifest), manifest.path)):
            phones = collapse(line.split())
            unknown = [p for p in phones if base_phone(p) not in PHONE_UNITS]
            if unknown:
                raise ValueError(f"{phn}:{i + 1}: {unknown[0]!r} is not a phone unit (expected {PHONE_UNITS[0]}, ...)")
            if phones:
                rows.append(i)
                targets.append(ctc_targets([phones]))
        return cls(manifest, rows, targets, featurize, cache_dir)

    def __len__(self) -> int:
        return len(self.rows)

    def features(self, i: int) -> np.ndarray:
        row = self.rows[i]
        if not self.cache_dir:
            return self.featurize(self.manifest.audio(row))
        path = os.path.join(self.cache_dir, f"{row}.npy")
        if not os.path.exists(path):
            f = self.featurize(self.manifest.audio(row))
            with atomic_write(path, "wb", what="feature cache") as fh:
                np.save(fh, f)
        return np.array(np.load(path, mmap_mode="r"))

    def __getitem__(self, i: int) -> Tuple[np.ndarray, List[int]]:
        return self.features(i), self.targets[i]


@dataclass
class RecognizerTrainingData:
    """What a phone recognizer trains on (``speechlm phone-units train``): ``train`` (the transcribed
    utterances of a split, then any pseudo-labelled ones), ``valid`` (or None), ``transcribed`` (how many
    of ``train`` have transcripts), ``skipped`` ((``.wrd`` line, word) of utterances left out for a word
    missing from the lexicon), ``input_dim`` (feature channels) and ``pseudo`` ((split, label file,
    utterances) of each pseudo-labelled part)."""

    train: object
    valid: Optional[PhoneCtcDataset]
    transcribed: int
    skipped: List[Tuple[int, str]]
    input_dim: int
    pseudo: List[Tuple[str, str, int]]


def recognizer_training_data(corpus: str, split: str, lexicon, featurize: Callable, pseudo=(),
                             valid_split: Optional[str] = None,
                             cache_dir: Optional[str] = None) -> RecognizerTrainingData:
    """The transcribed utterances of ``corpus/split``, plus each ``(split, phn file)`` of ``pseudo``
    (frame-level labels from an earlier recognizer), and ``valid_split`` when it has ``.tsv`` and ``.wrd``.
    ``cache_dir``: where features of a checkpoint layer are kept per split (None: not cached).
    Raises ``ValueError`` naming the file for a bad pseudo-label file or no usable utterance."""
    from torch.utils.data import ConcatDataset

    def cache(name):
        return cache_dir and os.path.join(cache_dir, name)

    train, skipped = PhoneCtcDataset.from_split(corpus, split, lexicon, featurize, cache(split))
    parts, pseudo_parts = [train], []
    for pseudo_split, phn in pseudo:
        parts.append(PhoneCtcDataset.from_frame_labels(corpus, pseudo_split, phn, featurize, cache(pseudo_split)))
        pseudo_parts.append((pseudo_split, phn, len(parts[-1])))
    data = ConcatDataset(parts) if len(parts) > 1 else train
    if not len(data):
        raise ValueError(f"no usable utterance in {corpus}/{split}")
    valid = None
    if valid_split and all(os.path.isfile(os.path.join(corpus, f"{valid_split}.{e}")) for e in ("tsv", "wrd")):
        valid, _ = PhoneCtcDataset.from_split(corpus, valid_split, lexicon, featurize, cache(valid_split))
    input_dim = next(p for p in parts if len(p)).features(0).shape[1]
    return RecognizerTrainingData(data, valid, len(train), skipped, input_dim, pseudo_parts)


@dataclass
class TrainingConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 2e-3
    seed: int = 0
    max_updates: Optional[int] = None
    clip_norm: float = 5.0
    time_masks: int = 0  # SpecAugment: masks per utterance of up to time_mask_width input frames (set to 0)
    time_mask_width: int = 10
    channel_masks: int = 0  # and of up to channel_mask_width input channels
    channel_mask_width: int = 6


def collate(items: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded ``(B, T, D)`` features and their lengths ``(B,)``."""
    feats = [torch.from_numpy(f) for f in items]
    lengths = torch.tensor([len(f) for f in feats])
    return nn.utils.rnn.pad_sequence(feats, batch_first=True), lengths


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, cfg: TrainingConfig) -> torch.Tensor:
    """Zero random time spans and channel bands of normalized features ``(B, T, D)`` (torch's RNG)."""
    x = x.clone()
    for b in range(x.shape[0]):
        n = int(lengths[b])
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, cfg.time_mask_width + 1, ()))
            s = int(torch.randint(0, max(1, n - w), ()))
            x[b, s:s + w] = 0.0
        for _ in range(cfg.channel_masks):
            w = int(torch.randint(0, cfg.channel_mask_width + 1, ()))
            s = int(torch.randint(0, max(1, x.shape[2] - w), ()))
            x[b, :n, s:s + w] = 0.0
    return x


def batch_order(n: int, batch_size: int, seed: int, epoch: int) -> List[np.ndarray]:
    """The batches of epoch ``epoch`` (1-based): a permutation drawn from ``(seed, epoch)`` alone."""
    order = np.random.default_rng((seed, epoch)).permutation(n)
    return [order[b:b + batch_size] for b in range(0, n, batch_size)]


def _ctc_loss(model, ctc, x, lengths, targets):
    lp, out_len = model(x, lengths)
    tgt = [torch.tensor(t) for t in targets]
    return ctc(lp.transpose(0, 1), torch.cat(tgt), out_len, torch.tensor([len(t) for t in tgt])), lp, out_len


@torch.no_grad()
def evaluate(model: PhoneRecognizer, data: PhoneCtcDataset, batch_size: int = 16) -> Dict[str, float]:
    """CTC loss (per target token, averaged over utterances: the training loss's definition) and greedy phone
    error rate (SIL left out) of ``data``."""
    import editdistance

    was_training = model.training
    model.eval()
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True, reduction="none")
    sil = PHONE_UNITS.index("SIL") + 1
    loss = errors = ref_len = 0.0
    for b in range(0, len(data), batch_size):
        items = [data[i] for i in range(b, min(b + batch_size, len(data)))]
        per_utt, lp, out_len = _ctc_loss(model, ctc, *collate([f for f, _ in items]), [t for _, t in items])
        loss += sum(x.item() / len(t) for x, (_, t) in zip(per_utt, items))
        for (_, t), hyp in zip(items, greedy_ctc(lp, out_len, BLANK)):
            ref = [u for u in t if u != sil]
            errors += editdistance.eval([u for u in hyp if u != sil], ref)
            ref_len += len(ref)
    model.train(was_training)
    return {"loss": loss / max(1, len(data)), "per": errors / max(1.0, ref_len)}


def targets_digest(data) -> str:
    """A digest of a training set's target sequences (a resumed run must train on the same data)."""
    import hashlib

    h = hashlib.sha1()
    for i in range(len(data)):
        h.update(np.asarray(_targets_of(data, i), dtype=np.int32).tobytes() + b"|")
    return f"{len(data)} utterances, sha1 {h.hexdigest()[:12]}"


def _targets_of(data, i):
    if isinstance(data, PhoneCtcDataset):
        return data.targets[i]
    if isinstance(data, torch.utils.data.ConcatDataset):
        d = int(np.searchsorted(data.cumulative_sizes, i, side="right"))
        return _targets_of(data.datasets[d], i - (data.cumulative_sizes[d - 1] if d else 0))
    return data[i][1]


def _resume_state(path: str, cfg: PhoneRecognizerConfig, tcfg: TrainingConfig, digest: str):
    from speechlm.checkpoint import checkpoint_damage, read_torch_file

    damage = checkpoint_damage(path)
    if damage:
        raise ValueError(f"{path}: {damage}; remove it to train from scratch")
    state = read_torch_file(path, "phone recognizer training state")
    for name, want in (("model", asdict(cfg)), ("training", asdict(tcfg))):
        have = state[f"{name}_config"]
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        if diff:
            pairs = ", ".join(f"{k}: {a!r} there, {b!r} now" for k, (a, b) in diff.items())
            raise ValueError(f"{path}: a run with other {name} settings ({pairs}); give the same settings to "
                             "resume it, or another directory (or remove it) to start over")
    if state["train_data"] != digest:
        raise ValueError(f"{path}: a run on other training data ({state['train_data']} there, {digest} now); "
                         "give the same data to resume it, or another directory (or remove it) to start over")
    return state


def train_recognizer(
    train,
    cfg: Optional[PhoneRecognizerConfig] = None,
    tcfg: Optional[TrainingConfig] = None,
    valid: Optional[PhoneCtcDataset] = None,
    train_dir: Optional[str] = None,
    on_epoch_end: Optional[Callable[[dict], None]] = None,
) -> Tuple[PhoneRecognizer, dict]:
    """Train with CTC on ``train`` (a ``PhoneCtcDataset``, or a ``torch.utils.data.ConcatDataset`` of them:
    transcribed speech plus pseudo-labelled speech); returns the model (eval mode) and the history
    ``{"losses": [every update's loss], "epochs": [{"epoch", "updates", "train_loss", "valid_loss", "valid_per"}]}``.

    With ``train_dir``, every finished epoch is saved to ``train_dir/checkpoint_last.pt`` and a run that
    finds one resumes from it (same settings required). ``on_epoch_end(record)`` runs after each save."""
    from speechlm.checkpoint import atomic_torch_save

    cfg = cfg or PhoneRecognizerConfig()
    tcfg = tcfg or TrainingConfig()
    torch.manual_seed(tcfg.seed)
    model = PhoneRecognizer(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr)
    n_batches = math.ceil(len(train) / tcfg.batch_size)
    total = tcfg.epochs * n_batches if tcfg.max_updates is None else min(tcfg.max_updates, tcfg.epochs * n_batches)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=max(total, 1), pct_start=0.1)
    ctc = nn.CTCLoss(blank=BLANK, zero_infinity=True)
    history: dict = {"losses": [], "epochs": []}
    start_epoch = 1
    last = os.path.join(train_dir, CHECKPOINT_LAST) if train_dir else None
    digest = targets_digest(train) if last else ""
    if last and os.path.exists(last):
        state = _resume_state(last, cfg, tcfg, digest)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        history = state["history"]
        start_epoch = state["epoch"] + 1
        logger.info("resumed from %s after epoch %d (%d updates)", last, state["epoch"], len(history["losses"]))
    elif train_dir:
        os.makedirs(train_dir, exist_ok=True)
    model.train()
    for epoch in range(start_epoch, tcfg.epochs + 1):
        if len(history["losses"]) >= total:
            break
        epoch_losses = []
        for idx in batch_order(len(train), tcfg.batch_size, tcfg.seed, epoch):
            if len(history["losses"]) >= total:
                break
            items = [train[int(i)] for i in idx]
            x, lengths = collate([f for f, _ in items])
            if tcfg.time_masks or tcfg.channel_masks:
                x = spec_augment(x, lengths, tcfg)
            loss, _, _ = _ctc_loss(model, ctc, x, lengths, [t for _, t in items])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), tcfg.clip_norm)
            opt.step()
            sched.step()
            history["losses"].append(loss.item())
            epoch_losses.append(loss.item())
        record = {"epoch": epoch, "updates": len(history["losses"]), "train_loss": float(np.mean(epoch_losses))}
        if valid is not None and len(valid):
            v = evaluate(model, valid, tcfg.batch_size)
            record.update(valid_loss=v["loss"], valid_per=v["per"])
        history["epochs"].append(record)
        logger.info("epoch %d/%d: %d updates, train ctc %.3f%s", epoch, tcfg.epochs, record["updates"],
                    record["train_loss"], f", valid ctc {record['valid_loss']:.3f}, greedy PER "
                    f"{100 * record['valid_per']:.1f} %" if "valid_loss" in record else "")
        if last:
            atomic_torch_save({"model_config": asdict(cfg), "training_config": asdict(tcfg),
                               "units": list(PHONE_UNITS), "model": model.state_dict(), "optimizer": opt.state_dict(),
                               "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                               "train_data": digest, "epoch": epoch, "history": history}, last)
        if on_epoch_end is not None:
            on_epoch_end(record)
    model.eval()
    return model, history

