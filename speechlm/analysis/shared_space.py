"""Where speech meets text: SpeechLM's Shared Transformer, layer by layer (the paper's Figure 4, measured).

Every utterance of a split is seen twice, as 50 Hz frames:

- **speech**: waveform -> front end -> Speech Transformer (``extract_features(output_layer=L/2)``): layer 0,
  the Shared Transformer's input; then the output of each Shared Transformer layer k = 1..L/2;
- **text**: the same utterance's frame-level units -- by default its true phones (``CORPUS/SPLIT.phn``) at
  their true durations, i.e. what the text side would be if the phonemizer knew the durations -> unit
  embedding: layer 0; then each Shared Transformer layer (``extract_text_features``).

Both views are frames of the same utterance at the same rate, so speech frame t and text frame t are the
same instant and carry the same true phone (from the corpus's alignments, whatever units the model uses).

Per layer, on frames subsampled per utterance (the same instants in both views):

- ``same_phone_nn``: % of speech frames whose nearest text frame (cosine) carries the same true phone;
  ``chance``: the same for a text frame drawn at random (sum over phones of the two views' frame shares);
- ``same_phone_nn_centred``: the same after subtracting each view's mean vector (a constant offset
  between the views -- a "modality direction" -- no longer counts);
- ``speech_nn`` / ``text_nn``: the same within one view (how phonetic each view is on its own);
- ``mean_cos``: cosine between the mean speech vector and the mean text vector;
- ``cka``: linear CKA (Kornblith et al., 2019) between speech frame t and text frame t, paired by
  utterance and instant;
- ``norm_ratio``: mean L2 norm of the speech vectors over that of the text vectors.

Neighbours are searched among frames of *other* utterances: the Shared Transformer adds the same absolute
position to both views, so the text frame at the same instant of the same utterance would be near by its
position alone, and it always carries the same phone.
"""
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from speechlm.errors import UserError

DEFAULT_FRAMES_PER_UTT = 100  # frames kept per utterance (of ~150-250 in a mini-corpus sentence)
DEFAULT_TSNE_POINTS = 500  # frames per view in each t-SNE panel (Barnes-Hut: a few CPU seconds a panel)
# Frame counts of labels and speech may differ by one (the corpus checker's tolerance)
FRAME_TOLERANCE = 1


@dataclass
class Utterance:
    """One row of the split: ``wav`` float32 (S,), ``units`` (T,) ids of the model's unit dictionary,
    ``phones`` (T,) ids into ``SharedSpaceData.phone_names``; T = the speech's 50 Hz frames (at most)."""

    uid: str
    wav: np.ndarray
    units: np.ndarray
    phones: np.ndarray


@dataclass
class SharedSpaceData:
    utterances: List[Utterance]
    phone_names: List[str]


@dataclass
class LayerStats:
    """One layer's figures (percentages for the ``*_nn`` and ``chance``)."""

    layer: int
    same_phone_nn: float
    chance: float
    same_phone_nn_centred: float
    speech_nn: float
    text_nn: float
    mean_cos: float
    cka: Optional[float]
    norm_ratio: float
    frames: int


def load_data(corpus: str, split: str, unit_dict, units_dir: Optional[str] = None, label: str = "phn",
              max_utts: Optional[int] = None) -> SharedSpaceData:
    """The split's audio, the text-side units (``UNITS_DIR/SPLIT.LABEL`` through ``unit_dict``; default
    the corpus's true phones) and the true phone of every frame (``CORPUS/SPLIT.phn``).

    Raises ``UserError`` naming the file and line for a missing file, a line count that is not the
    manifest's, a symbol outside ``unit_dict`` or a frame count off by more than one frame.
    """
    from speechlm.data.manifest import num_frames_50hz
    from speechlm.data.readers import LabelFile, Manifest

    tsv = os.path.join(corpus, f"{split}.tsv")
    if not os.path.isfile(tsv):
        raise UserError(f"{tsv}: no manifest for split {split!r} in {corpus} (a corpus from `speechlm corpus`)")
    manifest = Manifest.load(tsv)
    phn_path = os.path.join(corpus, f"{split}.phn")
    if not os.path.isfile(phn_path):
        raise UserError(f"{phn_path}: the true 50 Hz phones of every frame are needed (manifests/README.md, "
                        "`{split}.phn`; the mini corpus has them)")
    phones = LabelFile(phn_path, len(manifest), tsv)
    unit_path = os.path.join(units_dir or corpus, f"{split}.{label}")
    units = LabelFile(unit_path, len(manifest), tsv, dictionary=unit_dict)
    n = len(manifest) if max_utts is None else min(len(manifest), max_utts)
    phone_ids: Dict[str, int] = {}
    utts = []
    for i in range(n):
        T = num_frames_50hz(manifest.num_samples(i))
        p, u = phones.tokens(i), units.tokens(i)
        for path, toks, where in ((phn_path, p, phones.where(i)), (unit_path, u, units.where(i))):
            if abs(len(toks) - T) > FRAME_TOLERANCE:
                raise UserError(f"{where}: {len(toks)} frames, but {manifest.where(i)} has {T} frames of 20 ms; "
                                f"{os.path.basename(path)} must be 50 Hz labels of the same manifest")
        m = min(T, len(p), len(u))
        utts.append(Utterance(
            uid=os.path.splitext(manifest.rows[i][0])[0], wav=manifest.audio(i),
            units=np.asarray(units.encode(u[:m], i), dtype=np.int64),
            phones=np.asarray([phone_ids.setdefault(s, len(phone_ids)) for s in p[:m]], dtype=np.int64),
        ))
    if len(utts) < 2:
        raise UserError(f"{tsv}: {len(utts)} utterance(s); the nearest-neighbour search needs at least two "
                        "(neighbours come from other utterances)")
    return SharedSpaceData(utts, list(phone_ids))


def layer_views(model, wav: np.ndarray, units: np.ndarray, normalize: bool = False):
    """``([speech (T,D) per layer], [text (T,D) per layer])`` of one utterance, layer 0 (the Shared
    Transformer's input: Speech Transformer output / unit embedding) to its top; float32 numpy.

    ``model`` is a ``SpeechLMModel`` in eval mode; ``normalize``: layer-normalise the waveform (the
    pre-training task's ``normalize``).
    """
    import torch
    import torch.nn.functional as F

    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(wav, dtype=np.float32)).view(1, -1)
        if normalize:
            x = F.layer_norm(x, x.shape)
        n_speech = len(model.speech_encoder.layers)
        h, _ = model.extract_features(x, None, output_layer=n_speech)
        u = torch.from_numpy(units).view(1, -1)
        n_shared = len(model.shared_encoder.layers)
        speech = [h] + [model.shared_encoder(h, None, k) for k in range(1, n_shared + 1)]
        text = [model.embed_units(u)] + [model.extract_text_features(u, None, k)[0] for k in range(1, n_shared + 1)]
    return [s[0].float().numpy() for s in speech], [t[0].float().numpy() for t in text]


def collect_frames(model, data: SharedSpaceData, frames_per_utt: int = DEFAULT_FRAMES_PER_UTT, seed: int = 1,
                   normalize: bool = False):
    """Subsampled frames of every utterance in both views.

    Returns ``speech``, ``text``: lists over layers of (N, D) float32 arrays (row r of both = the same
    utterance and instant), ``phones`` (N,) and ``groups`` (N,) utterance index of each row.
    """
    rng = np.random.default_rng(seed)
    speech: List[List[np.ndarray]] = []
    text: List[List[np.ndarray]] = []
    phones, groups = [], []
    for g, utt in enumerate(data.utterances):
        s_layers, t_layers = layer_views(model, utt.wav, utt.units, normalize)
        m = len(utt.phones)
        if s_layers[0].shape[0] < m:
            raise RuntimeError(f"{utt.uid}: the model made {s_layers[0].shape[0]} frames for {m} labels")
        keep = np.sort(rng.choice(m, size=min(m, frames_per_utt), replace=False))
        if not speech:
            speech, text = [[] for _ in s_layers], [[] for _ in t_layers]
        for k, (s, t) in enumerate(zip(s_layers, t_layers)):
            speech[k].append(s[keep])
            text[k].append(t[keep])
        phones.append(utt.phones[keep])
        groups.append(np.full(len(keep), g, dtype=np.int64))
    return ([np.concatenate(v) for v in speech], [np.concatenate(v) for v in text],
            np.concatenate(phones), np.concatenate(groups))


def nearest_same_label(queries: np.ndarray, q_labels: np.ndarray, keys: np.ndarray, k_labels: np.ndarray,
                       q_groups: Optional[np.ndarray] = None, k_groups: Optional[np.ndarray] = None,
                       chunk: int = 2048) -> float:
    """% of ``queries`` (N,D) whose nearest ``keys`` (M,D) row by cosine has the same label.

    With ``q_groups``/``k_groups`` (utterance ids), keys of the query's own group are not candidates.
    """
    import torch
    import torch.nn.functional as F

    q = F.normalize(torch.from_numpy(queries).float(), dim=1)
    k = F.normalize(torch.from_numpy(keys).float(), dim=1)
    ql, kl = torch.from_numpy(q_labels), torch.from_numpy(k_labels)
    exclude = q_groups is not None and k_groups is not None
    if exclude:
        qg, kg = torch.from_numpy(q_groups), torch.from_numpy(k_groups)
    hits = 0
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ k.t()
        if exclude:
            own = qg[s:s + chunk, None] == kg[None, :]
            if own.all(dim=1).any():
                raise ValueError("a query has no key outside its own group")
            sim.masked_fill_(own, float("-inf"))
        hits += int((kl[sim.argmax(dim=1)] == ql[s:s + chunk]).sum())
    return 100.0 * hits / max(len(q), 1)


def chance_level(q_labels: np.ndarray, k_labels: np.ndarray) -> float:
    """% of (query, random key) pairs with the same label: sum over labels of the two label shares."""
    n = int(max(q_labels.max(initial=0), k_labels.max(initial=0))) + 1
    fq = np.bincount(q_labels, minlength=n) / max(len(q_labels), 1)
    fk = np.bincount(k_labels, minlength=n) / max(len(k_labels), 1)
    return float(100.0 * (fq * fk).sum())


def linear_cka(x: np.ndarray, y: np.ndarray) -> Optional[float]:
    """Linear CKA of paired rows ``x`` (N,D1), ``y`` (N,D2): ||Yc'Xc||_F^2 / (||Xc'Xc||_F ||Yc'Yc||_F) with
    column-centred Xc, Yc; 1 for views equal up to rotation and scale. None when a view is constant."""
    xc = x.astype(np.float64) - x.mean(0, dtype=np.float64)
    yc = y.astype(np.float64) - y.mean(0, dtype=np.float64)
    den = np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)
    if den == 0:
        return None
    return float(np.linalg.norm(yc.T @ xc) ** 2 / den)


def mean_cosine(x: np.ndarray, y: np.ndarray) -> float:
    """Cosine between the mean row of ``x`` and the mean row of ``y``."""
    a, b = x.mean(0, dtype=np.float64), y.mean(0, dtype=np.float64)
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else 0.0


def layer_stats(layer: int, speech: np.ndarray, text: np.ndarray, phones: np.ndarray,
                groups: Optional[np.ndarray]) -> LayerStats:
    """The figures of one layer from paired frames (row r of ``speech`` and ``text``: the same instant)."""
    return LayerStats(
        layer=layer,
        same_phone_nn=round(nearest_same_label(speech, phones, text, phones, groups, groups), 2),
        chance=round(chance_level(phones, phones), 2),
        same_phone_nn_centred=round(nearest_same_label(speech - speech.mean(0), phones, text - text.mean(0), phones,
                                                       groups, groups), 2),
        speech_nn=round(nearest_same_label(speech, phones, speech, phones, groups, groups), 2),
        text_nn=round(nearest_same_label(text, phones, text, phones, groups, groups), 2),
        mean_cos=round(mean_cosine(speech, text), 4),
        cka=None if (c := linear_cka(speech, text)) is None else round(c, 4),
        norm_ratio=round(float(np.linalg.norm(speech, axis=1).mean() / max(np.linalg.norm(text, axis=1).mean(),
                                                                             1e-12)), 3),
        frames=int(len(phones)),
    )


def load_model(checkpoint: str, random_init: bool = False, seed: int = 1):
    """``(SpeechLMModel in eval mode, normalize)`` of a pre-trained ``speechlm`` checkpoint; with
    ``random_init`` its architecture with fresh weights (``torch.manual_seed(seed)``), as the demo's
    "random weights" row starts. ``normalize``: the pre-training task's waveform normalisation."""
    import torch

    from speechlm.checkpoint import read_checkpoint
    from speechlm.models.pretrained import PretrainedSpec
    from speechlm.models.speechlm import SpeechLMModel

    state = read_checkpoint(checkpoint)
    spec = PretrainedSpec.from_checkpoint(checkpoint, state)
    torch.manual_seed(seed)
    model = SpeechLMModel.from_spec(spec)
    if not random_init:
        model.load_state_dict(state["model"], strict=True)
    task = state["cfg"].get("task") or {}
    normalize = bool(task.get("normalize", False) if hasattr(task, "get") else getattr(task, "normalize", False))
    return model.eval(), normalize


def analyze(model, data: SharedSpaceData, frames_per_utt: int = DEFAULT_FRAMES_PER_UTT, seed: int = 1,
            normalize: bool = False):
    """``(stats per layer, (speech, text, phones, groups))``: ``LayerStats`` from layer 0 (the Shared
    Transformer's input) to its top, and the frames they were computed on (for ``plot_tsne``)."""
    speech, text, phones, groups = collect_frames(model, data, frames_per_utt, seed, normalize)
    stats = [layer_stats(k, s, t, phones, groups) for k, (s, t) in enumerate(zip(speech, text))]
    return stats, (speech, text, phones, groups)


def cross_reading(model, data: SharedSpaceData, letters: Optional[List[List[int]]] = None, blank: int = 0,
                  normalize: bool = False) -> dict:
    """Each pre-training head on each view, at the top of the Shared Transformer, nothing masked: whether
    what one side learnt reads the other side.

    - ``umlm_acc_speech`` / ``umlm_acc_text``: % of frames whose unit the Shared Transformer's UMLM head picks
      (the unit the text view carries: the true phones, or the ``--units-dir`` units) from speech / from text;
    - ``uctc_ler_text`` / ``uctc_ler_speech``: letter error % of greedy CTC through the UCTC head on the text view
      (true phones at true durations: the text branch's own ceiling) / on speech (the zero-shot reading);
      only with ``letters`` (one id list per utterance) and a UCTC head.
    """
    import editdistance
    import torch

    from speechlm.decoding.ctc import greedy_ctc

    top = len(model.shared_encoder.layers)
    hits = {"speech": 0, "text": 0}
    errors = {"speech": 0, "text": 0}
    frames = n_letters = 0
    with torch.inference_mode():
        for i, utt in enumerate(data.utterances):
            x = torch.from_numpy(np.ascontiguousarray(utt.wav, dtype=np.float32)).view(1, -1)
            if normalize:
                x = torch.nn.functional.layer_norm(x, x.shape)
            u = torch.from_numpy(utt.units).view(1, -1)
            m = u.size(1)
            views = {"speech": model.extract_features(x, None)[0][:, :m],
                     "text": model.extract_text_features(u, None, top)[0]}
            for name, h in views.items():
                hits[name] += int((model.umlm_logits(h[0], 1).argmax(-1) == u[0]).sum())
                if letters is not None and model.uctc_head is not None:
                    hyp = greedy_ctc(model.uctc_head(h), [m], blank)[0]
                    errors[name] += editdistance.eval(hyp, letters[i])
            frames += m
            n_letters += len(letters[i]) if letters is not None else 0
    out = {f"umlm_acc_{k}": round(100.0 * v / max(frames, 1), 2) for k, v in hits.items()}
    if letters is not None and model.uctc_head is not None:
        out.update({f"uctc_ler_{k}": round(100.0 * v / max(n_letters, 1), 2) for k, v in errors.items()})
    return out


def read_letters(corpus: str, split: str, letter_dict, n: int) -> List[List[int]]:
    """The first ``n`` lines of ``CORPUS/SPLIT.ltr`` as ids of ``letter_dict``; ``UserError`` naming the file and
    line for a missing file, too few lines or a letter outside the dictionary."""
    path = os.path.join(corpus, f"{split}.ltr")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no letter transcripts of {split} (the mini corpus has them); "
                        "or give --no-letters")
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    if len(lines) < n:
        raise UserError(f"{path}: {len(lines)} lines for {n} utterances of {split}.tsv")
    out = []
    for i, line in enumerate(lines[:n]):
        ids = []
        for sym in line.split():
            k = letter_dict.index(sym)
            if k == letter_dict.unk():
                raise UserError(f"{path}:{i + 1}: letter {sym!r} is not in the model's letter dictionary")
            ids.append(k)
        out.append(ids)
    return out


def format_cross_reading(r: dict) -> str:
    lines = ["| head (top of the Shared Transformer) | on speech | on text |", "|---|---|---|",
             f"| UMLM, unit accuracy % | {r['umlm_acc_speech']:.1f} | {r['umlm_acc_text']:.1f} |"]
    if "uctc_ler_speech" in r:
        lines.append(f"| UCTC, letter error % | {r['uctc_ler_speech']:.1f} | {r['uctc_ler_text']:.1f} |")
    return "\n".join(lines)


def stats_json(stats: Sequence[LayerStats]) -> List[dict]:
    return [asdict(s) for s in stats]


def format_table(stats: Sequence[LayerStats]) -> str:
    lines = ["| layer | same-phone NN % (chance) | centred | speech→speech NN % | text→text NN % | mean cos | CKA | "
             "norm speech / text |", "|---|---|---|---|---|---|---|---|"]
    for s in stats:
        name = "0 (input)" if s.layer == 0 else str(s.layer)
        cka = "–" if s.cka is None else f"{s.cka:.3f}"
        lines.append(f"| {name} | {s.same_phone_nn:.1f} ({s.chance:.1f}) | {s.same_phone_nn_centred:.1f} | "
                     f"{s.speech_nn:.1f} | {s.text_nn:.1f} | "
                     f"{s.mean_cos:.3f} | {cka} | {s.norm_ratio:.2f} |")
    return "\n".join(lines)


def plot_tsne(speech: Sequence[np.ndarray], text: Sequence[np.ndarray], stats: Sequence[LayerStats], png: str,
              points: int = DEFAULT_TSNE_POINTS, seed: int = 1, title: str = "") -> None:
    """One t-SNE panel per layer (sklearn ``TSNE`` of ``points`` speech and ``points`` text frames, the same
    instants), speech and text coloured apart; written atomically to ``png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    n = len(speech[0])
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(n, size=min(n, points), replace=False))
    fig, axes = plt.subplots(1, len(speech), figsize=(3.6 * len(speech), 3.9), squeeze=False)
    for ax, s, t, st in zip(axes[0], speech, text, stats):
        x = np.concatenate([s[pick], t[pick]]).astype(np.float32)
        y = TSNE(n_components=2, perplexity=min(30.0, (len(x) - 1) / 3), init="pca", learning_rate="auto",
                 random_state=seed).fit_transform(x)
        k = len(pick)
        ax.scatter(y[:k, 0], y[:k, 1], s=3, c="C0", label="speech", alpha=0.6)
        ax.scatter(y[k:, 0], y[k:, 1], s=3, c="C1", label="text (phone units)", alpha=0.6)
        name = "input (layer 0)" if st.layer == 0 else f"Shared Transformer layer {st.layer}"
        ax.set_title(f"{name}\nsame-phone NN {st.same_phone_nn:.0f} % (chance {st.chance:.0f} %)", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0][0].legend(fontsize=7, markerscale=3, loc="best")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png + ".tmp", dpi=100, format="png")
    plt.close(fig)
    os.replace(png + ".tmp", png)


def write_json(obj, path: str) -> None:
    import json

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(path + ".tmp", path)

