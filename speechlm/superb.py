"""SUPERB in miniature: frozen upstreams, a learned softmax-weighted sum of their layers, light heads.

The protocol of SUPERB (and of the SpeechLM paper's Table 3), shrunk to the embedded corpora:

- the upstream is frozen; every hidden state it lists (``speechlm.s3prl.UpstreamExpert``: the input of
  the first layer, then each layer) is computed once per utterance and cached;
- per task and seed, a ``WeightedLayerSum`` (s3prl's ``Featurizer`` math: softmax of one learnable
  weight per layer, initialised at 0) feeds a light head trained on the cached states:
  PR = linear CTC over phones (the corpus's true ``.phn`` alignments, runs collapsed, SIL dropped; PER);
  ASR = 2-layer BiLSTM CTC over letters (``.ltr``; letter error rate); SID = mean pooling + linear over
  the corpus's voices on short random crops (accuracy on fixed crops of test utterances); IC = mean
  pooling + linear over the intents of the SLU corpus (``speechlm.corpora.slu``; accuracy);
- each head trains for a fixed number of epochs (no model selection) and is scored on the test split.

Upstreams (``Upstream``): ``fbank`` (80 log-Mel at 100 Hz, not normalised; one "layer"), ``random`` (a
SpeechLM of a given architecture with random weights) and ``checkpoint`` (a
``speechlm`` checkpoint through the s3prl upstream).
"""
import json
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from speechlm.data.readers import Manifest, load_labels, read_lines
from speechlm.decoding.ctc import greedy_ctc
from speechlm.errors import UserError

TASKS = ("PR", "ASR", "SID", "IC")
METRIC = {"PR": "PER %", "ASR": "letter error %", "SID": "accuracy %", "IC": "accuracy %"}
LOWER_IS_BETTER = {"PR": True, "ASR": True, "SID": False, "IC": False}
SID_CROP_FRAMES = 25  # 0.5 s at 50 Hz: short enough that a voice is not given away by the words
SILENCE = "SIL"


# ----------------------------------------------------------------------------------- featurizer
class WeightedLayerSum(nn.Module):
    """s3prl's ``Featurizer`` weighted sum: ``softmax(w) . stack(layers)``, ``w`` (L,) initialised to 0.

    ``forward(states (L, B, T, D)) -> (B, T, D)``.
    """

    def __init__(self, num_layers: int):
        super().__init__()
        self.weights = nn.Parameter(torch.zeros(num_layers))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        w = F.softmax(self.weights, dim=-1)
        return (w.view(-1, *([1] * (states.dim() - 1))) * states).sum(0)


# ----------------------------------------------------------------------------------- upstreams
@dataclass
class Upstream:
    """One row of the table: ``kind`` 'fbank', 'random' or 'checkpoint'; ``path``: the checkpoint, or for
    'random' a checkpoint or pre-training yaml whose architecture is built with random weights."""

    name: str
    kind: str
    path: Optional[str] = None
    seed: int = 0

    def build(self) -> Callable[[np.ndarray], np.ndarray]:
        """-> ``states(wav) -> (layers, frames, dim)`` float16."""
        if self.kind == "fbank":
            from speechlm.data.fbank import compute_fbank

            def fbank(wav):
                # raw log-Mel: a per-utterance mean normalisation would zero every mean-pooled vector
                # (SID, IC at chance); the heads' biases absorb the offset
                return compute_fbank(wav)[None].astype(np.float16)

            return fbank
        from speechlm.s3prl import UpstreamExpert

        if self.kind == "random":
            torch.manual_seed(self.seed)
            expert = UpstreamExpert(random_model(self.path))
        else:
            expert = UpstreamExpert(self.path)

        def states(wav):
            with torch.inference_mode():
                hs = expert([torch.from_numpy(wav.astype(np.float32))])["hidden_states"]
            return torch.stack([h[0] for h in hs]).numpy().astype(np.float16)

        return states


def random_model(path: str):
    """A ``SpeechLMModel`` of the architecture of ``path`` (a ``speechlm`` checkpoint, or a pre-training
    yaml with a ``model:`` section), with random weights (torch's current seed), in eval mode."""
    from omegaconf import OmegaConf

    from speechlm.models.pretrained import PretrainedSpec
    from speechlm.models.speechlm import SpeechLMModel

    if path.endswith((".yaml", ".yml")):
        model_cfg = OmegaConf.to_container(OmegaConf.load(path).model, resolve=True)
        spec = PretrainedSpec(model_cfg, num_units=8, num_letters=0)
    else:
        spec, _ = PretrainedSpec.read(path)
    return SpeechLMModel.from_spec(spec).eval()


# ----------------------------------------------------------------------------------- data
@dataclass
class Split:
    states: List[np.ndarray]  # (layers, frames, dim) float16 per utterance
    labels: List  # per utterance: a list of target ids (PR, ASR) or one class id (SID, IC)


def phone_sequence(frames: str) -> List[str]:
    """Frame-level phones -> the phone sequence: runs collapsed, SIL dropped."""
    out, prev = [], None
    for p in frames.split():
        if p != prev and p != SILENCE:
            out.append(p)
        prev = p
    return out


def task_labels(task: str, corpus: str, split: str, n: int, vocab: Optional[List[str]] = None):
    """``(labels, vocab)`` of ``split``: id sequences (PR, ASR) or class ids (SID, IC)."""
    ext = {"PR": "phn", "ASR": "ltr", "SID": "spk", "IC": "intent"}[task]
    path = os.path.join(corpus, f"{split}.{ext}")
    if not os.path.isfile(path):
        raise UserError(f"{path}: not found; task {task} needs the {ext!r} labels of {split}")
    lines = load_labels(path, n, os.path.join(corpus, f"{split}.tsv"))
    if task in ("PR", "ASR"):
        if vocab is None:
            dict_path = os.path.join(corpus, f"dict.{ext}.txt")
            vocab = [ln.split()[0] for ln in read_lines(dict_path) if ln.strip()]
            vocab = [v for v in vocab if v != SILENCE]
        index = {s: i + 1 for i, s in enumerate(vocab)}  # 0 = CTC blank
        seqs = [phone_sequence(ln) if task == "PR" else ln.split() for ln in lines]
        return [[index[s] for s in seq if s in index] for seq in seqs], vocab
    if vocab is None:
        vocab = sorted(set(lines))
    index = {s: i for i, s in enumerate(vocab)}
    # a test utterance of a class the training split lacks cannot be scored: None (left out, counted)
    return [index.get(s) for s in lines], vocab


def compute_states(states_fn, corpus: str, split: str, limit: Optional[int] = None) -> List[np.ndarray]:
    man = Manifest.load(os.path.join(corpus, f"{split}.tsv"))
    n = len(man) if limit is None else min(limit, len(man))
    return [states_fn(man.audio(i)) for i in range(n)]


# ----------------------------------------------------------------------------------- heads
class Head(nn.Module):
    """Weighted layer sum + the task's light head."""

    def __init__(self, task: str, num_layers: int, dim: int, num_out: int, lstm_dim: int = 64):
        super().__init__()
        self.task = task
        self.featurizer = WeightedLayerSum(num_layers)
        if task == "ASR":
            self.lstm = nn.LSTM(dim, lstm_dim, num_layers=2, bidirectional=True, batch_first=True)
            self.out = nn.Linear(2 * lstm_dim, num_out)
        else:
            self.lstm = None
            self.out = nn.Linear(dim, num_out)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """``states (L, B, T, D)``, ``lengths (B,)`` -> CTC logits (B, T, V) or class logits (B, C)."""
        x = self.featurizer(states)
        if self.task in ("SID", "IC"):
            mask = (torch.arange(x.size(1))[None, :] < lengths[:, None]).unsqueeze(-1).to(x.dtype)
            return self.out((x * mask).sum(1) / lengths[:, None].to(x.dtype))
        if self.lstm is not None:
            x = nn.utils.rnn.pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
            x, _ = self.lstm(x)
            x, _ = nn.utils.rnn.pad_packed_sequence(x, batch_first=True)
        return self.out(x)


def _batch(states: Sequence[np.ndarray]) -> Tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([s.shape[1] for s in states])
    L, _, D = states[0].shape
    out = torch.zeros(L, len(states), int(lengths.max()), D)
    for i, s in enumerate(states):
        out[:, i, : s.shape[1]] = torch.from_numpy(s.astype(np.float32))
    return out, lengths


def _crop(s: np.ndarray, rng: np.random.Generator, frames: int) -> np.ndarray:
    if s.shape[1] <= frames:
        return s
    start = int(rng.integers(0, s.shape[1] - frames + 1))
    return s[:, start: start + frames]


def _edit_rate(hyps: List[List[int]], refs: List[List[int]]) -> float:
    import editdistance

    errors = sum(editdistance.eval(h, r) for h, r in zip(hyps, refs))
    return 100.0 * errors / max(1, sum(len(r) for r in refs))


@dataclass
class HeadConfig:
    """Sized for a 2-core CPU (examples/superb/README.md has the measured cost)."""

    epochs: Dict[str, int] = field(default_factory=lambda: {"PR": 20, "ASR": 20, "SID": 30, "IC": 30})
    lr: Dict[str, float] = field(default_factory=lambda: {"PR": 5e-3, "ASR": 1e-2, "SID": 5e-3, "IC": 5e-3})
    batch_size: int = 8
    lstm_dim: int = 32
    sid_crop_frames: int = SID_CROP_FRAMES


def train_head(task: str, train: Split, test: Split, num_out: int, seed: int,
               cfg: HeadConfig = HeadConfig()) -> Tuple[float, List[float]]:
    """Train the ``task`` head on ``train`` (seeded), score it on ``test``: ``(score, layer weights)``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    L, _, D = train.states[0].shape
    ctc = task in ("PR", "ASR")
    frames_per_crop = cfg.sid_crop_frames * (2 if D == 80 and L == 1 else 1)  # fbank runs at 100 Hz
    head = Head(task, L, D, num_out + 1 if ctc else num_out, cfg.lstm_dim)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.lr[task])
    n = len(train.states)
    for _ in range(cfg.epochs[task]):
        order = rng.permutation(n)
        for start in range(0, n, cfg.batch_size):
            idx = order[start: start + cfg.batch_size]
            states = [train.states[i] for i in idx]
            if task == "SID":
                states = [_crop(s, rng, frames_per_crop) for s in states]
            x, lengths = _batch(states)
            out = head(x, lengths)
            if ctc:
                targets = [train.labels[i] for i in idx]
                lp = F.log_softmax(out, -1).transpose(0, 1)
                tl = torch.tensor([len(t) for t in targets])
                loss = F.ctc_loss(lp, torch.tensor([t for ts in targets for t in ts], dtype=torch.long), lengths,
                                  tl, blank=0, reduction="mean", zero_infinity=True)
            else:
                loss = F.cross_entropy(out, torch.tensor([train.labels[i] for i in idx]))
            opt.zero_grad()
            loss.backward()
            opt.step()
    head.eval()
    test_rng = np.random.default_rng(12345)  # the same test crops for every upstream and seed
    hyps, refs = [], []
    with torch.no_grad():
        for start in range(0, len(test.states), cfg.batch_size):
            states = test.states[start: start + cfg.batch_size]
            if task == "SID":
                states = [_crop(s, test_rng, frames_per_crop) for s in states]
            x, lengths = _batch(states)
            out = head(x, lengths)
            if ctc:
                hyps += greedy_ctc(out, lengths, blank=0)
            else:
                hyps += out.argmax(-1).tolist()
            refs += test.labels[start: start + cfg.batch_size]
    if ctc:
        score = _edit_rate(hyps, refs)
    else:
        score = 100.0 * float(np.mean([h == r for h, r in zip(hyps, refs)]))
    weights = F.softmax(head.featurizer.weights.detach(), -1).tolist()
    return score, weights


# ----------------------------------------------------------------------------------- the run
@dataclass
class TaskData:
    corpus: str
    train_split: str
    test_split: str
    train_limit: Optional[int] = None
    test_limit: Optional[int] = None


def summarize(scores: List[float]) -> Dict[str, float]:
    mean = float(np.mean(scores))
    spread = float(np.std(scores, ddof=1)) if len(scores) > 1 else 0.0
    return {"mean": round(mean, 2), "spread": round(spread, 2)}


def _evaluate(job) -> Tuple[str, Dict[str, dict], float]:
    """One upstream on every task and seed (one worker process): ``(name, {task: entry}, CPU seconds)``."""
    up, tasks, labels, seeds, cfg = job
    torch.set_num_threads(1)
    t0 = time.process_time()
    states_fn = up.build()
    cache: Dict[Tuple[str, str, int], List[np.ndarray]] = {}
    out = {}
    for task, td in tasks.items():
        tr, te, num_out = labels[task]
        for split, labs in ((td.train_split, tr), (td.test_split, te)):
            if (td.corpus, split, len(labs)) not in cache:
                cache[(td.corpus, split, len(labs))] = compute_states(states_fn, td.corpus, split, len(labs))
        train = Split(cache[(td.corpus, td.train_split, len(tr))], tr)
        keep = [i for i, y in enumerate(te) if y is not None]
        test_states = cache[(td.corpus, td.test_split, len(te))]
        test = Split([test_states[i] for i in keep], [te[i] for i in keep])
        runs = []
        for seed in seeds:
            score, weights = train_head(task, train, test, num_out, seed, cfg)
            runs.append({"seed": seed, "score": round(score, 2), "layer_weights": [round(w, 4) for w in weights]})
        out[task] = {"scores": [r["score"] for r in runs], **summarize([r["score"] for r in runs]),
                     "layer_weights": [r["layer_weights"] for r in runs], "num_layers": train.states[0].shape[0]}
    return up.name, out, time.process_time() - t0


def run_superb(upstreams: List[Upstream], tasks: Dict[str, TaskData], seeds: Sequence[int], exp: str,
               cfg: HeadConfig = HeadConfig(), jobs: int = 1, log=print) -> dict:
    """Every task x upstream x seed (``jobs`` upstreams at a time, one process and thread each); writes
    ``exp/results.json`` (atomically) and returns it."""
    os.makedirs(exp, exist_ok=True)
    results = {"protocol": "frozen upstream, softmax-weighted sum of all hidden states, light heads; "
                           "fixed epochs, scored on the test split",
               "metric": {t: METRIC[t] for t in tasks}, "lower_is_better": {t: LOWER_IS_BETTER[t] for t in tasks},
               "seeds": list(seeds), "upstreams": [u.name for u in upstreams], "tasks": {t: {} for t in tasks},
               "head_config": {"epochs": cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
                               "lstm_dim": cfg.lstm_dim, "sid_crop_frames": cfg.sid_crop_frames},
               "data": {}, "cpu_seconds": {}}
    labels = {}
    for task, td in tasks.items():
        n_train = len(Manifest.load(os.path.join(td.corpus, f"{td.train_split}.tsv")))
        n_test = len(Manifest.load(os.path.join(td.corpus, f"{td.test_split}.tsv")))
        n_train = n_train if td.train_limit is None else min(n_train, td.train_limit)
        n_test = n_test if td.test_limit is None else min(n_test, td.test_limit)
        tr, vocab = task_labels(task, td.corpus, td.train_split, n_train)
        te, _ = task_labels(task, td.corpus, td.test_split, n_test, vocab)
        labels[task] = (tr, te, len(vocab))
        unseen = sum(y is None for y in te)
        results["data"][task] = {"corpus": os.path.basename(os.path.normpath(td.corpus)),
                                 "train": f"{td.train_split} ({n_train} utterances)",
                                 "test": f"{td.test_split} ({n_test - unseen} utterances"
                                         + (f"; {unseen} of classes unseen in training left out)" if unseen else ")"),
                                 "classes": len(vocab)}
    work = [(up, tasks, labels, list(seeds), cfg) for up in upstreams]
    if jobs > 1 and len(work) > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(min(jobs, len(work))) as pool:
            done = pool.map(_evaluate, work, chunksize=1)
    else:
        done = [_evaluate(w) for w in work]
    for name, entries, cpu in done:
        for task, entry in entries.items():
            results["tasks"][task][name] = entry
            log(f"  {name:16s} {task:3s} {METRIC[task]}: {entry['mean']:.2f} ± {entry['spread']:.2f} {entry['scores']}")
        results["cpu_seconds"][name] = round(cpu, 1)
    tmp = os.path.join(exp, "results.json.tmp")
    with open(tmp, "w") as f:
        json.dump(results, f, indent=1)
    os.replace(tmp, os.path.join(exp, "results.json"))
    return results


def table(results: dict) -> str:
    """The printed table: one row per upstream, ``mean ± spread`` per task."""
    tasks = list(results["tasks"])
    head = f"{'upstream':24s}" + "".join(f"{t + ' (' + results['metric'][t] + ')':>24s}" for t in tasks)
    lines = [head, "-" * len(head)]
    for up in results["upstreams"]:
        cells = []
        for t in tasks:
            e = results["tasks"][t].get(up)
            cells.append(f"{'-':>24s}" if e is None else f"{e['mean']:>15.2f} ± {e['spread']:<6.2f}")
        lines.append(f"{up:24s}" + "".join(cells))
    return "\n".join(lines)


def plot_layer_weights(results: dict, path: str) -> None:
    """One panel per upstream: the learned layer weights (mean over seeds) of each task."""
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # font-search chatter
    import matplotlib.pyplot as plt

    ups = [u for u in results["upstreams"] if any(u in results["tasks"][t] for t in results["tasks"])]
    fig, axes = plt.subplots(1, len(ups), figsize=(3.2 * len(ups), 2.8), squeeze=False)
    for ax, up in zip(axes[0], ups):
        for task, rows in results["tasks"].items():
            if up not in rows:
                continue
            w = np.mean(np.array(rows[up]["layer_weights"]), 0)
            ax.plot(range(len(w)), w, marker="o", label=task)
        ax.set_title(up, fontsize=9)
        ax.set_xlabel("hidden state (0 = input of layer 1)", fontsize=8)
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("softmax weight")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def pattern(results: dict, text: str = "SpeechLM-P", speech: str = "speech-only") -> Dict[str, str]:
    """The paper's Table-3 question per task: does ``text`` differ from ``speech`` beyond the seeds' spread?"""
    out = {}
    for task, rows in results["tasks"].items():
        a, b = rows.get(text), rows.get(speech)
        if a is None or b is None:
            continue
        better = (a["mean"] < b["mean"]) if LOWER_IS_BETTER[task] else (a["mean"] > b["mean"])
        beyond = abs(a["mean"] - b["mean"]) > (a["spread"] + b["spread"])
        verdict = ("better" if better else "worse") + (" beyond the spread" if beyond else " within the spread")
        out[task] = f"{text} {a['mean']:.2f} vs {speech} {b['mean']:.2f}: {verdict}"
    return out

