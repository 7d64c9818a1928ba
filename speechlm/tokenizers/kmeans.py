"""Hidden units: MiniBatchKMeans on dumped frame features, applied in chunks with a matrix-product argmin.

Learning follows fairseq's HuBERT ``simple_kmeans/learn_kmeans.py`` (scikit-learn ``MiniBatchKMeans``,
k-means++ init, ``reassignment_ratio=0``) on a random ``percent`` of the frames. The model is stored
as its centroids only (``.npy``, shape (K, dim)): nothing to unpickle when labelling.

Applying: argmin_k ||x - c_k||^2 = argmin_k (||c_k||^2 - 2 x.c_k), the ||x||^2 term being the same for
every k; computed with one float32 matrix product per chunk of frames over a whole shard, rather than
per utterance with the full distance as fairseq's ``ApplyKmeans`` does (``scripts/bench_tokenizers.py``
compares the two).
"""
import logging
import os
from collections import Counter
from typing import Dict, List, Sequence, Tuple

import numpy as np

from speechlm.atomic import atomic_write

logger = logging.getLogger(__name__)

APPLY_CHUNK_FRAMES = 1024  # frames per matrix product: a (1024 x 500) float32 block (2 MB) stays in cache


def sample_frames(shards: Sequence[np.ndarray], percent: float, seed: int) -> np.ndarray:
    """A random ``percent`` (0 < percent <= 1) of the rows of the shards taken as one sequence, in order
    (float32). The draw is over the concatenated rows, so 1 shard and N shards give the same sample."""
    if not 0.0 < percent <= 1.0:
        raise ValueError(f"percent must be in (0, 1], got {percent}")
    if percent >= 1.0:
        return np.concatenate([np.asarray(f, dtype=np.float32) for f in shards], 0)
    n = sum(f.shape[0] for f in shards)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=max(1, int(round(n * percent))), replace=False))
    out, start = [], 0
    for feats in shards:
        lo, hi = np.searchsorted(idx, [start, start + feats.shape[0]])
        out.append(np.asarray(feats[idx[lo:hi] - start], dtype=np.float32))
        start += feats.shape[0]
    return np.concatenate(out, 0)


def learn_kmeans(
    feats: np.ndarray,
    n_clusters: int = 500,
    seed: int = 0,
    batch_size: int = 10000,
    max_iter: int = 100,
    n_init: int = 20,
    init_size: int = None,
    max_no_improvement: int = 100,
) -> np.ndarray:
    """Centroids (n_clusters, dim) of MiniBatchKMeans on ``feats`` (frames, dim)."""
    from sklearn.cluster import MiniBatchKMeans

    if feats.shape[0] < n_clusters:
        raise ValueError(
            f"only {feats.shape[0]} sampled frames for {n_clusters} clusters; raise --percent or lower -k"
        )
    km = MiniBatchKMeans(
        n_clusters=n_clusters,
        init="k-means++",
        max_iter=max_iter,
        batch_size=batch_size,
        tol=0.0,
        max_no_improvement=max_no_improvement,
        n_init=n_init,
        init_size=init_size,
        reassignment_ratio=0.0,
        compute_labels=False,
        random_state=seed,
    )
    km.fit(feats)
    logger.info("k-means: %d clusters on %d frames, inertia/frame %.4f", n_clusters, len(feats),
                km.inertia_ / max(1, len(feats)) if getattr(km, "inertia_", None) else float("nan"))
    return km.cluster_centers_.astype(np.float32)


def load_centroids(path: str) -> np.ndarray:
    """Centroids (K, dim) from a ``.npy`` written by ``speechlm kmeans learn``."""
    c = np.load(path, allow_pickle=False)
    if c.ndim != 2:
        raise ValueError(f"{path}: expected a (K, dim) centroid matrix, got shape {c.shape}")
    return c.astype(np.float32)


class KMeansApplier:
    """Nearest centroid of every row: ``__call__(feats (N, dim)) -> (N,) int64``.

    Per chunk of frames: one float32 GEMM with the pre-scaled ``-2 C^T``, ``|c|^2`` added in place, argmin.
    Chunks of ~1k frames keep the (chunk x K) block in cache (measured faster than 32k-frame blocks).
    """

    def __init__(self, centroids: np.ndarray, chunk_frames: int = APPLY_CHUNK_FRAMES):
        C = np.ascontiguousarray(centroids, dtype=np.float32)  # (K, D)
        self.minus_2_ct = np.ascontiguousarray(-2.0 * C.T)  # (D, K)
        self.c_norm = (C * C).sum(1)[None, :]  # (1, K)
        self.chunk = chunk_frames

    @property
    def n_clusters(self) -> int:
        return self.c_norm.shape[1]

    def __call__(self, feats: np.ndarray) -> np.ndarray:
        if feats.ndim != 2 or feats.shape[1] != self.minus_2_ct.shape[0]:
            raise ValueError(
                f"features of shape {feats.shape} do not match centroids of dim {self.minus_2_ct.shape[0]}"
            )
        out = np.empty(feats.shape[0], dtype=np.int64)
        for s in range(0, feats.shape[0], self.chunk):
            x = np.asarray(feats[s : s + self.chunk], dtype=np.float32)  # reads the chunk out of the mmap
            d = x @ self.minus_2_ct
            d += self.c_norm
            out[s : s + len(x)] = d.argmin(1)
        return out


def write_dict(path: str, counts: Dict[int, int], n_clusters: int) -> None:
    """``dict.km.txt``: ``0 .. K-1`` with their frame counts (all K listed, so ids are stable)."""
    with atomic_write(path, what="k-means dictionary") as f:
        for k in range(n_clusters):
            f.write(f"{k} {counts.get(k, 0)}\n")


def purity(units: List[np.ndarray], phones: List[Sequence[str]]) -> Dict[str, float]:
    """HuBERT's label-quality measures between frame-level units and true phones (lists per utterance).

    ``phone_purity``: accuracy of mapping each unit to its most frequent phone; ``cluster_purity``: of
    mapping each phone to its most frequent unit; ``pnmi``: I(phone; unit) / H(phone).
    """
    joint: Counter = Counter()
    for i, (u, p) in enumerate(zip(units, phones)):
        if len(u) != len(p):
            raise ValueError(f"utterance {i + 1}: {len(u)} units but {len(p)} phone frames; both must be "
                             "50 Hz labels of the same manifest row")
        joint.update(zip(np.asarray(u).tolist(), p))
    if not joint:
        raise ValueError("no frames to score")
    unit_ids = sorted({u for u, _ in joint})
    phone_ids = sorted({p for _, p in joint})
    ui = {u: i for i, u in enumerate(unit_ids)}
    pi = {p: i for i, p in enumerate(phone_ids)}
    m = np.zeros((len(unit_ids), len(phone_ids)))
    for (u, p), c in joint.items():
        m[ui[u], pi[p]] = c
    n = m.sum()
    pj = m / n
    pu, pp = pj.sum(1, keepdims=True), pj.sum(0, keepdims=True)
    nz = pj > 0
    mi = (pj[nz] * np.log(pj[nz] / (pu @ pp)[nz])).sum()
    h_p = -(pp[pp > 0] * np.log(pp[pp > 0])).sum()
    return {
        "frames": int(n),
        "units_used": len(unit_ids),
        "phone_purity": float(m.max(1).sum() / n),
        "cluster_purity": float(m.max(0).sum() / n),
        "pnmi": float(mi / h_p) if h_p > 0 else 0.0,
    }


# ------------------------------------------------------------------------------------------------
# the steps on dumped shards (``speechlm kmeans learn|apply|merge``)


def learn_from_shards(feat_dir: str, split: str, nshard: int, km_path: str, n_clusters: int = 500,
                      percent: float = 0.1, seed: int = 0, **kmeans_args) -> int:
    """Centroids from a ``percent`` sample of every feature shard -> ``km_path`` (.npy); returns the
    number of frames learnt from. ``kmeans_args`` go to ``learn_kmeans``."""
    from speechlm.tokenizers.features import load_feature_shard

    shards = [load_feature_shard(feat_dir, split, r, nshard)[0] for r in range(nshard)]
    feats = sample_frames(shards, percent, seed)
    centroids = learn_kmeans(feats, n_clusters, seed, **kmeans_args)
    with atomic_write(km_path, "wb", what="k-means model") as f:
        np.save(f, centroids)
    return len(feats)


def apply_to_shard(feat_dir: str, split: str, km_path: str, lab_dir: str, nshard: int = 1,
                   rank: int = 0) -> Tuple[str, int, int]:
    """Label one feature shard -> ``lab_dir/{split}[_{rank}_{nshard}].km`` (one line per utterance),
    plus ``dict.km.txt`` when there is one shard. Returns ``(path, utterances, frames)``."""
    from speechlm.tokenizers.features import load_feature_shard

    applier = KMeansApplier(load_centroids(km_path))
    feats, lens = load_feature_shard(feat_dir, split, rank, nshard)
    labels = applier(feats)
    os.makedirs(lab_dir, exist_ok=True)
    name = split if nshard == 1 else f"{split}_{rank}_{nshard}"
    out = os.path.join(lab_dir, f"{name}.km")
    offsets = np.concatenate([[0], np.cumsum(lens)])
    with atomic_write(out, what="k-means labels") as f:
        for a, b in zip(offsets[:-1], offsets[1:]):
            f.write(" ".join(map(str, labels[a:b].tolist())) + "\n")
    if nshard == 1:
        write_dict(os.path.join(lab_dir, "dict.km.txt"), Counter(labels.tolist()), applier.n_clusters)
    else:  # what the merge checks: the same centroids, K and features (input, options) in every shard
        import json

        from speechlm.tokenizers.shards import SIDECAR, write_sidecar

        feat_sidecar = os.path.join(feat_dir, f"{split}_{rank}_{nshard}{SIDECAR}")
        features = None
        if os.path.isfile(feat_sidecar):
            with open(feat_sidecar, encoding="utf-8") as f:
                doc = json.load(f)
            features = {"inputs": doc.get("inputs"), "options": doc.get("options")}
        write_sidecar(out[: -len(".km")], "kmeans apply", rank, nshard, {"centroids": km_path},
                      {"n_clusters": applier.n_clusters, "split": split, "features": features})
    return out, len(lens), len(labels)


def merge_label_shards(lab_dir: str, split: str, nshard: int, km_path: str) -> str:
    """Concatenate ``lab_dir/{split}_{r}_{nshard}.km`` into ``{split}.km`` and write ``dict.km.txt``;
    ``FileNotFoundError`` naming the missing shards; ``UserError`` naming a shard whose sidecar disagrees
    with the others (another input, K or options), that was labelled with other centroids than
    ``km_path``, or that holds an id >= K."""
    import json

    from speechlm.errors import UserError
    from speechlm.tokenizers.shards import SIDECAR, check_shards, check_sidecars, fingerprint, shard_prefixes

    n_clusters = load_centroids(km_path).shape[0]
    counts: Counter = Counter()
    out = os.path.join(lab_dir, f"{split}.km")
    prefix = os.path.join(lab_dir, split)
    parts = [p + ".km" for p in shard_prefixes(prefix, nshard)]
    hint = "run `speechlm kmeans apply` for those ranks"
    check_shards(parts, hint)
    check_sidecars(prefix, nshard, hint)
    with open(shard_prefixes(prefix, nshard)[0] + SIDECAR, encoding="utf-8") as f:
        if json.load(f)["inputs"]["centroids"] != fingerprint(km_path):
            raise UserError(f"cannot merge: the shards were labelled with other centroids than --km-path "
                            f"{km_path}; give the k-means model the shards were applied with")
    with atomic_write(out, what="merged k-means labels") as fo:
        for p in parts:
            with open(p, encoding="utf-8") as f:
                for lineno, line in enumerate(f, start=1):
                    ids = [int(x) for x in line.split()]
                    if ids and max(ids) >= n_clusters:
                        raise UserError(f"{p}:{lineno}: unit {max(ids)} >= K={n_clusters} of {km_path}; this "
                                        "shard came from another k-means model: re-run its rank")
                    counts.update(ids)
                    fo.write(line)
    write_dict(os.path.join(lab_dir, "dict.km.txt"), counts, n_clusters)
    return out
