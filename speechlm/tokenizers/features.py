"""Frame features for the speech-side tokenizers: 39-d MFCC (first iteration) or a checkpoint's layer.

Both come out at 50 Hz by default, one row per frame of fairseq's conv front end
(``num_frames_50hz(n) = floor((n - 400) / 320) + 1``), so k-means labels line up with the ``.phn``/``.km``
label convention. The 50 Hz frame ``i`` is centred at sample ``320 i + 200``, exactly the centre of the
100 Hz Kaldi frame ``2 i``: MFCCs are taken at 100 Hz and every second frame kept (``rate=100`` keeps all).

Dumps follow fairseq's HuBERT ``simple_kmeans`` layout: ``{feat_dir}/{split}_{rank}_{nshard}.npy``
(all frames of the shard, float32, shape (frames, dim)) and ``.len`` (frames per utterance, one a line).
"""
import errno
import os
from typing import Callable, List, Optional, Tuple

import numpy as np

from speechlm.atomic import AtomicGroup
from speechlm.data.manifest import SAMPLE_RATE, num_frames_50hz
from speechlm.data.readers import Manifest
from speechlm.errors import UserError, UserFileNotFoundError
from speechlm.tokenizers.shards import shard_range

DELTA_WINDOW = 2  # Kaldi/torchaudio compute_deltas(win_length=5)


def compute_deltas(x: np.ndarray, win: int = DELTA_WINDOW) -> np.ndarray:
    """Regression deltas over time of ``x`` (T, D), edges replicated (as torchaudio/Kaldi)."""
    T = x.shape[0]
    padded = np.concatenate([np.repeat(x[:1], win, 0), x, np.repeat(x[-1:], win, 0)], 0)
    denom = 2 * sum(k * k for k in range(1, win + 1))
    out = np.zeros_like(x)
    for k in range(1, win + 1):
        out += k * (padded[win + k : win + k + T] - padded[win - k : win - k + T])
    return out / denom


def mfcc_39(wav: np.ndarray, rate: int = 50) -> np.ndarray:
    """13 MFCC (no energy, no dither) + deltas + delta-deltas of a 16 kHz waveform in [-1, 1].

    Returns float32 (frames, 39) at ``rate`` 100 Hz (Kaldi frames) or 50 Hz (every second one).
    """
    import kaldi_native_fbank as knf

    opts = knf.MfccOptions()
    opts.frame_opts.samp_freq = SAMPLE_RATE
    opts.frame_opts.dither = 0.0  # deterministic features
    opts.use_energy = False  # as fairseq's HuBERT dump_mfcc_feature.py
    opts.mel_opts.num_bins = 23
    m = knf.OnlineMfcc(opts)
    m.accept_waveform(SAMPLE_RATE, wav.astype(np.float32).tolist())
    m.input_finished()
    n = m.num_frames_ready
    if n == 0:
        return np.zeros((0, 39), np.float32)
    x = np.stack([m.get_frame(i) for i in range(n)]).astype(np.float32)
    d = compute_deltas(x)
    feats = np.concatenate([x, d, compute_deltas(d)], 1).astype(np.float32)
    if rate == 100:
        return feats
    if rate != 50:
        raise ValueError(f"MFCC rate must be 50 or 100 Hz, got {rate}")
    return feats[::2][: num_frames_50hz(len(wav))]


class CheckpointFeatureReader:
    """Layer ``layer`` (1-based, output of that Transformer layer) of a fairseq ``hubert`` or a
    ``speechlm`` checkpoint, at 50 Hz: ``__call__(wav) -> (frames, dim)`` float32.

    ``half``: ``"fp16"`` or ``"bf16"`` runs the model in that precision (the features are returned as float32).
    """

    def __init__(self, checkpoint: str, layer: int, device: str = "cpu", half: Optional[str] = None):
        import torch
        from fairseq import checkpoint_utils

        from speechlm.checkpoint import read_checkpoint

        self.layer = layer
        self.device = device
        state = read_checkpoint(checkpoint)  # the one reader: allow-listed, validated, read once
        cfg = state["cfg"]
        name = cfg.model.get("_name", None)
        if str(name).endswith(("_ctc", "_st", "_seq2seq")):
            raise UserError(
                f"{checkpoint}: is a fine-tuned {name!r} checkpoint; features need a pre-trained "
                "hubert or speechlm checkpoint (the one the fine-tuning started from, its model.w2v_path)"
            )
        self.normalize = bool(cfg.task.get("normalize", False))
        if name == "hubert":
            self.model = self._load_hubert(cfg, state["model"], checkpoint)
        elif name == "speechlm":
            from speechlm.models.speechlm import SpeechLMModel

            self.model = SpeechLMModel.from_checkpoint(checkpoint, state=state)
        else:
            import speechlm

            speechlm.register()  # any registered model: fairseq needs its task and model classes
            models, _, _ = checkpoint_utils.load_model_ensemble_and_task([checkpoint], state=state)
            self.model = models[0]
        if not hasattr(self.model, "extract_features"):
            raise UserError(f"{checkpoint}: model {name!r} has no extract_features(); cannot dump a layer")
        self.model.eval().to(device)
        if half not in (None, "fp16", "bf16"):
            raise ValueError(f"half={half!r}: use 'fp16', 'bf16' or None")
        self.dtype = {None: torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[half]
        self.model.to(self.dtype)
        self.torch = torch

    @staticmethod
    def _load_hubert(cfg, model_state, path):
        """A HubertModel without its pre-training heads (no task or label dictionaries needed)."""
        from fairseq.models.hubert import HubertModel

        model = HubertModel(cfg.model, cfg.task, [None])
        model.remove_pretraining_modules()
        model.target_glu = None
        skip = ("final_proj.", "label_embs_concat", "target_glu.")
        kept = {k: v for k, v in model_state.items() if not k.startswith(skip)}
        missing, unexpected = model.load_state_dict(kept, strict=False)
        if missing or unexpected:
            raise UserError(f"{path}: checkpoint does not match its hubert config: missing {missing}, "
                             f"unexpected {unexpected}")
        return model

    def __call__(self, wav: np.ndarray) -> np.ndarray:
        """``wav`` -> ``(frames, dim)``; with ``layer="all"``: ``(L, frames, dim)``, the output of each of the
        L layers (``extract_features(..., ret_layer_results=True)``'s entries: before any final norm)."""
        torch = self.torch
        import torch.nn.functional as F

        with torch.inference_mode():
            x = torch.from_numpy(wav.astype(np.float32)).to(self.device).view(1, -1)
            if self.normalize:
                x = F.layer_norm(x, x.shape)
            x = x.to(self.dtype)
            if self.layer == "all":
                if not hasattr(self.model, "layer_states"):
                    raise UserError(f"--layer all needs a speechlm checkpoint; {type(self.model).__name__} "
                                    "lists no layer results: give one layer with --layer N")
                states, _ = self.model.layer_states(x)
                feat = torch.stack([s[0] for s in states[1:]]).float().cpu().numpy()
            else:
                out = self.model.extract_features(source=x, padding_mask=None, output_layer=self.layer)
                feat = out[0] if isinstance(out, (tuple, list)) else out["x"]
                feat = feat.squeeze(0).float().cpu().numpy()
        n = num_frames_50hz(len(wav))
        if feat.shape[-2] != n:
            raise RuntimeError(f"model produced {feat.shape[-2]} frames for {len(wav)} samples, expected {n}")
        return feat


def _allocate(path: str) -> None:
    """Reserve a memory-mapped output's blocks now: on a full disk writing into a sparse map kills the process
    with SIGBUS (no message); ``posix_fallocate`` fails with ENOSPC instead, which is reported cleanly."""
    with open(path, "rb+") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, os.path.getsize(path))
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL, getattr(errno, "ENOTSUP", -1)):
                return  # a file system without fallocate: nothing to reserve with
            raise


def dump_features(
    manifest: str,
    feat_dir: str,
    split: str,
    extractor: Callable[[np.ndarray], np.ndarray],
    nshard: int = 1,
    rank: int = 0,
    expected_frames: Optional[Callable[[int], int]] = num_frames_50hz,
) -> Tuple[str, int]:
    """Dump the features of shard ``rank`` of ``manifest`` to ``{feat_dir}/{split}_{rank}_{nshard}.{npy,len}``.

    An ``extractor`` that returns ``(L, frames, dim)`` (``CheckpointFeatureReader(..., "all")``) gets one
    dump per layer, ``{feat_dir}/layer{k}/{split}_{rank}_{nshard}.*`` for k = 1..L, written as one unit.
    Returns ``(prefix, total_frames)`` (the first layer's prefix). Raises ``UserError`` naming the utterance
    when its frame count disagrees with ``expected_frames(num_samples)``.
    """
    man = Manifest.load(manifest)
    start, end = shard_range(len(man), nshard, rank)
    rows = man.rows[start:end]
    name = f"{split}_{rank}_{nshard}"
    prefixes = [os.path.join(feat_dir, name)]
    lens: List[int] = []
    outs = None
    total = None
    if expected_frames is not None:
        total = sum(expected_frames(n) for _, n in rows)
    offset = 0
    group = AtomicGroup(what="feature dump")
    with group as g:
        for i, (rel, n) in enumerate(rows, start=start):
            f = extractor(man.audio(i))
            frames = f.shape[-2]
            if expected_frames is not None and frames != expected_frames(n):
                raise UserError(f"{man.where(i)}: {frames} feature frames, expected {expected_frames(n)}")
            if not np.isfinite(f).all():
                raise UserError(f"{man.where(i)}: its features hold NaN or infinite values (the model or the "
                                "audio is broken: a diverged checkpoint, or NaN samples); nothing was written")
            layers = f if f.ndim == 3 else f[None]
            if outs is None:
                if total is None:
                    raise ValueError("expected_frames is needed to preallocate the dump")
                if f.ndim == 3:
                    prefixes = [os.path.join(feat_dir, f"layer{k}", name) for k in range(1, len(layers) + 1)]
                outs = []
                for p in prefixes:
                    outs.append(np.lib.format.open_memmap(g.path(p + ".npy"), mode="w+", dtype=np.float32,
                                                          shape=(total, f.shape[-1])))
                    _allocate(g.path(p + ".npy"))
            for out, x in zip(outs, layers):
                out[offset : offset + frames] = x
            offset += frames
            lens.append(frames)
        if outs is None:  # empty shard
            with open(g.path(prefixes[0] + ".npy"), "wb") as fh:
                np.save(fh, np.zeros((0, 0), np.float32))
        else:
            for out in outs:
                out.flush()
            del outs
        for p in prefixes:
            with open(g.path(p + ".len"), "w") as fl:
                fl.write("".join(f"{n}\n" for n in lens))
        g.marker = prefixes[-1] + ".len"  # renamed last: every layer's files are in place before it
    return prefixes[0], offset


def load_feature_shard(feat_dir: str, split: str, rank: int, nshard: int) -> Tuple[np.ndarray, List[int]]:
    """``(features (frames, dim) memory-mapped, lengths)`` of one dumped shard."""
    prefix = os.path.join(feat_dir, f"{split}_{rank}_{nshard}")
    if not os.path.isfile(prefix + ".npy"):
        raise UserFileNotFoundError(f"{prefix}.npy: feature shard not found; run "
                                f"`speechlm features dump ... --nshard {nshard} --rank {rank}` first")
    feats = np.load(prefix + ".npy", mmap_mode="r")
    with open(prefix + ".len") as f:
        lens = [int(x) for x in f.read().split()]
    if sum(lens) != feats.shape[0]:
        raise UserError(f"{prefix}.len sums to {sum(lens)} frames but {prefix}.npy has {feats.shape[0]}")
    return feats, lens


def _feature_name(checkpoint: Optional[dict], layer: Optional[int], rate: Optional[int]) -> str:
    if checkpoint:
        return f"layer {layer} of a checkpoint (sha1 {checkpoint['sha1'][:12]})"
    return "MFCC" if rate in (None, 50) else f"MFCC at {rate} Hz"


def check_feature_dir(feat_dir: str, checkpoint: Optional[str], layer: Optional[int], rate: int = 50) -> None:
    """Refuse a ``feat_dir`` holding features of another kind than asked for (k-means learnt on one kind and
    applied to another would go unnoticed): every ``features dump`` sidecar there must name the same
    checkpoint (by fingerprint), layer and MFCC rate. Raises UserError naming the sidecar, what it holds and
    what to do; an empty or missing ``feat_dir`` passes."""
    import glob
    import json

    from speechlm.tokenizers.shards import SIDECAR, fingerprint

    sidecars = sorted(glob.glob(os.path.join(glob.escape(feat_dir), "*" + SIDECAR)))
    want = None
    for side in sidecars:
        with open(side, encoding="utf-8") as f:
            doc = json.load(f)
        if doc.get("verb") != "features dump":
            continue
        if want is None:  # fingerprint the checkpoint only when there is something to compare with
            if checkpoint and not os.path.isfile(checkpoint):
                raise UserFileNotFoundError(f"{checkpoint}: checkpoint not found")
            want = (fingerprint(checkpoint) if checkpoint else None, layer if checkpoint else None,
                    None if checkpoint else rate)
        options, source = doc.get("options", {}), doc.get("inputs", {}).get("checkpoint")
        rate_of = options["rate"] if "rate" in options else (None if source else 50)  # older sidecars: no rate
        have = (source, options.get("layer"), rate_of)
        if have != want:
            raise UserError(f"{side} holds the features of {_feature_name(*have)}, this call asks for those of "
                            f"{_feature_name(*want)}: delete {feat_dir} and what was made from those features "
                            "(k-means, units), or give another feature directory")
