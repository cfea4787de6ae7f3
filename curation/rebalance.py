"""Concept rebalancing: embedding clusters (Vo et al. 2024) combined with metadata concepts (MetaCLIP).

Two views of "over-represented":

- *Clusters* (Vo et al. 2024, "Automatic data curation for self-supervised learning"): hierarchical k-means over the
  image embeddings (k-means on the samples, then k-means on the centroids, ...), then balanced sampling top-down: the
  root budget is shared equally between the top clusters (water-filling: a cluster smaller than its share keeps
  everything and its surplus goes to the others), each cluster's budget is shared the same way between its children,
  and inside a leaf every sample is kept with the same probability. `p_cluster` = leaf budget / leaf size.
- *Concepts* (MetaCLIP, Xu et al. 2023): each sample's metadata text is matched against a concept vocabulary
  (`curation.concepts`); a concept matched by `c` samples keeps each of them with probability `min(1, t / c)`, so
  rare concepts stay whole and a head concept keeps about `t` samples. A sample is kept if ANY of its concepts keeps
  it, so `p_concept` is the max over its concepts. A sample with no concept has `p_concept = 1`: it is governed by the
  clusters alone.

Default caps are derived from the corpus, and a cut cluster spares the rare concepts inside it
(`curation.rebalance_rules`). Measured keep rates on the dev
sets of `bench/rebalance_defaults.py` are in bench/BENCHMARKS.md.

The two are combined per sample (`RebalanceConfig.combine`, default `min`), and the keep/drop draw is a deterministic
uniform from `hash(seed, sample_id)`, so the result is the same whatever the row order. Rows are also sorted by
`sample_id` before clustering, so the clusters themselves do not depend on row order either.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from curation.decisions import Decision, StageCounts
from curation.rebalance_rules import (
    cluster_keep_probability,
    concept_counts,
    concept_keep_probability,
    default_cluster_cap,
    default_concept_cap,
    rare_concept_keep_probability,
    tail_share_cap,
    water_fill,
)

__all__ = [
    "OVER_CLUSTER", "OVER_CONCEPT", "REBALANCE_CODE_VERSION", "RebalanceConfig", "RebalanceResult",
    "cluster_keep_probability", "concept_counts", "concept_keep_probability",
    "default_cluster_cap", "default_clusters_per_level", "default_concept_cap", "hierarchical_kmeans",
    "kmeanspp_init", "rare_concept_keep_probability", "rebalance", "tail_share_cap", "uniform_from_id", "water_fill",
]

logger = logging.getLogger(__name__)

REBALANCE_CODE_VERSION = "rebalance-3"
OVER_CLUSTER, OVER_CONCEPT = "over_represented_cluster", "over_represented_concept"


@dataclass(frozen=True)
class RebalanceConfig:
    """How embedding clusters and metadata concepts are balanced (defaults are documented on each field)."""

    levels: int = 2
    """Levels of the k-means hierarchy (1 = plain k-means; Vo et al. use 3-4 for a billion images)."""
    clusters_per_level: tuple[int, ...] | None = None
    """k per level, finest first, decreasing. None: level 1 gets k1 = round(sqrt(n)) (bounded to [1, 65536] and to
    n // 4), and every level above divides by the same branching factor k1 ** (1 / levels), so every cluster has about
    the same number of children and the top level has about k1 ** (1 / levels) clusters (at least 2)."""
    niter: int = 20
    """Lloyd iterations of each k-means."""
    max_points_per_centroid: int = 256
    """faiss k-means trains on at most this many points per centroid (a random sample); all points are assigned."""
    init: str = "kmeans++"
    """Centroid initialisation: 'kmeans++' (D^2 sampling on <= 16 points per centroid; puts few centroids in a dense,
    tight mass, which is what makes the mass visible as one big cluster) or 'random' (faiss's default)."""
    cluster_budget: float | None = None
    """Fraction of the corpus that the cluster balancing keeps in expectation (Vo et al.'s budget, water-filled
    top-down). None: derived from `cluster_cap_factor`, which only trims clusters that stand out."""
    cluster_cap_factor: float = 3.0
    """With `cluster_budget` None: the root budget is sum(min(size, cap)) over the top clusters (a cluster-level
    MetaCLIP `t`); a top cluster larger than `factor` times the median top cluster is cut (`default_cluster_cap`)."""
    cluster_cap_share: float = 0.25
    """With `cluster_budget` None: a top cluster holding more than this share of the corpus is cut to it (never below
    the equal share n / k_top)."""
    cluster_spares_rare_concepts: bool = True
    """True: p_cluster = max(Vo et al.'s rate, the (cluster, concept) entries of `rare_concept_keep_probability`), so a
    dominant cluster is cut in its frequent concepts and unnamed members while a rare concept inside it stays whole.
    False: Vo et al. as published (every member of a cut cluster cut alike, whatever its concepts). The spared members
    come on top of the cluster budget (an explicit `cluster_budget` too), and how many depends on t: a huge
    `concept_cap` declares every concept rare, so the clusters then cut only samples without a concept."""
    concept_cap: float | None = None
    """MetaCLIP's t: a concept matched by c samples keeps each with probability min(1, t / c). None: derived from the
    corpus (`default_concept_cap`)."""
    concept_cap_fraction: float = 0.05
    """With `concept_cap` None: t = this fraction of the samples, at least `concept_cap_min`."""
    concept_tail_share: float | None = None
    """With `concept_cap` None and this set: MetaCLIP 2's rule instead of the fraction, t such that the concepts
    counted below t hold this share of all concept matches (at least `concept_cap_min`)."""
    concept_cap_min: float = 20.0
    """Smallest default t: a small corpus never caps a concept seen fewer times than this."""
    combine: str = "min"
    """'min' (default): keep probability = min(p_cluster, p_concept); each view caps on its own and a sample that is
    redundant in both (a head concept that is also a dense cluster: usually the same redundancy seen twice) is not
    punished twice. 'product': p_cluster * p_concept, treating them as independent evidence (stricter)."""
    mode: str = "drop"
    """'drop': sample with the keep probability (dropped rows get 'drop' decisions, kept rows weight 1). 'weight': keep
    every row with sample_weight = p / mean(p) (mean 1) and a 'downweight' decision for every row with p < 1."""
    seed: int = 0
    """Seed of k-means and of the per-sample keep draw (hash(seed, sample_id))."""

    def __post_init__(self) -> None:
        if self.levels < 1:
            raise ValueError("levels must be >= 1")
        if self.clusters_per_level is not None and len(self.clusters_per_level) != self.levels:
            raise ValueError(f"clusters_per_level needs {self.levels} entries, got {self.clusters_per_level}")
        if self.combine not in ("min", "product"):
            raise ValueError(f"combine must be 'min' or 'product', got {self.combine!r}")
        if self.mode not in ("drop", "weight"):
            raise ValueError(f"mode must be 'drop' or 'weight', got {self.mode!r}")
        if self.init not in ("kmeans++", "random"):
            raise ValueError(f"init must be 'kmeans++' or 'random', got {self.init!r}")
        if self.cluster_budget is not None and not 0.0 < self.cluster_budget <= 1.0:
            raise ValueError("cluster_budget must be in (0, 1]")
        if not 0.0 < self.cluster_cap_share <= 1.0 or not 0.0 < self.concept_cap_fraction <= 1.0:
            raise ValueError("cluster_cap_share and concept_cap_fraction must be in (0, 1]")
        if self.concept_tail_share is not None and not 0.0 < self.concept_tail_share < 1.0:
            raise ValueError("concept_tail_share must be in (0, 1)")


def default_clusters_per_level(n: int, levels: int) -> tuple[int, ...]:
    """The default k per level (finest first) for `n` samples; see `RebalanceConfig.clusters_per_level`."""
    k1 = int(min(max(1, round(math.sqrt(n))), 65536, max(1, n // 4)))
    branching = k1 ** (1.0 / levels)
    ks = [k1]
    for _ in range(1, levels):
        ks.append(max(min(2, ks[-1]), min(ks[-1], round(ks[-1] / branching))))
    return tuple(ks)


def _normalise_rows(x: np.ndarray, chunk: int = 65536) -> np.ndarray:
    """float32 C-contiguous rows of unit length (zero rows stay zero), in chunks (no full-size temporaries).

    Returns `x` itself when it already is float32, C-contiguous and unit-norm (it is never modified), else a copy.
    """
    x = np.asarray(x)
    norms = np.empty(len(x), np.float32)
    for start in range(0, len(x), chunk):
        block = x[start:start + chunk].astype(np.float32, copy=False)
        norms[start:start + chunk] = np.sqrt(np.einsum("ij,ij->i", block, block))
    if x.dtype == np.float32 and x.flags.c_contiguous and np.all(np.abs(norms - 1.0) < 1e-4):
        return x
    out = np.array(x, dtype=np.float32, order="C", copy=True)
    for start in range(0, len(out), chunk):
        out[start:start + chunk] /= np.maximum(norms[start:start + chunk, None], 1e-12)
    return out


def kmeanspp_init(x: np.ndarray, k: int, rng: np.random.Generator, sample_size: int | None = None) -> np.ndarray:
    """k-means++ seeding (D^2 sampling), on a random sample of `x` when `sample_size` is smaller than `len(x)`.

    Args:
        x: (n, d) float32 points.
        k: number of centroids (<= n).
        rng: random generator (the only source of randomness).
        sample_size: points considered; None for all.

    Returns:
        (k, d) float32 initial centroids, rows of `x`.
    """
    if sample_size is not None and sample_size < len(x):
        x = x[np.sort(rng.choice(len(x), size=sample_size, replace=False))]
    m = len(x)
    norms = np.einsum("ij,ij->i", x, x)
    centres = np.empty((k, x.shape[1]), np.float32)
    first = int(rng.integers(m))
    centres[0] = x[first]
    d2 = np.maximum(norms - 2.0 * (x @ centres[0]) + norms[first], 0.0).astype(np.float64)
    for j in range(1, k):
        total = d2.sum()
        i = int(rng.integers(m)) if total <= 0 else int(np.searchsorted(np.cumsum(d2), rng.random() * total))
        i = min(i, m - 1)
        centres[j] = x[i]
        np.minimum(d2, np.maximum(norms - 2.0 * (x @ centres[j]) + norms[i], 0.0), out=d2)
    return centres


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int, max_points_per_centroid: int,
            init: str) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means of unit rows with faiss: (centroids (k, d), labels (n,))."""
    import faiss

    n, d = x.shape
    if k >= n:  # every point is its own cluster
        return x.copy(), np.arange(n, dtype=np.int64)
    if k == 1:
        c = x.mean(0, keepdims=True)
        return _normalise_rows(c), np.zeros(n, np.int64)
    km = faiss.Kmeans(d, k, niter=niter, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=max_points_per_centroid, min_points_per_centroid=1)
    init_centroids = None
    if init == "kmeans++":
        rng = np.random.default_rng(seed)
        init_centroids = kmeanspp_init(x, k, rng, sample_size=min(n, 16 * k))
    km.train(x, init_centroids=init_centroids)
    _, labels = km.index.search(x, 1)
    return km.centroids.copy(), labels[:, 0].astype(np.int64)


def hierarchical_kmeans(x: np.ndarray, levels: int, ks: Sequence[int] | None = None, seed: int = 0, niter: int = 20,
                        max_points_per_centroid: int = 256,
                        init: str = "kmeans++") -> tuple[np.ndarray, list[np.ndarray]]:
    """Vo et al.'s hierarchical k-means: cluster the samples, then cluster the centroids of the level below.

    Args:
        x: (n, d) embeddings (normalised to unit rows here; spherical k-means).
        levels: number of levels.
        ks: clusters per level, finest first (None: `default_clusters_per_level`). A k larger than the number of
            points at its level is reduced to it.
        seed: k-means seed.
        niter: Lloyd iterations per level.
        max_points_per_centroid: faiss trains on at most this many points per centroid.
        init: 'kmeans++' or 'random' (see `RebalanceConfig.init`).

    Returns:
        (labels, centroids): labels is (n, levels) int64, column l the sample's cluster at level l + 1 (column 0 the
        leaf, the last column the top); centroids[l] is the (k_l, d) float32 centroid matrix of level l + 1.
    """
    n = len(x)
    ks = tuple(ks) if ks is not None else default_clusters_per_level(n, levels)
    if len(ks) != levels:
        raise ValueError(f"need {levels} values of k, got {ks}")
    labels = np.zeros((n, levels), np.int64)
    centroids: list[np.ndarray] = []
    if n == 0:
        return labels, [np.empty((0, x.shape[1] if x.ndim == 2 else 0), np.float32) for _ in range(levels)]
    points = _normalise_rows(x)
    mapping = np.arange(n, dtype=np.int64)  # sample -> point at the current level
    for level, k in enumerate(ks):
        k = max(1, min(int(k), len(points)))
        c, point_labels = _kmeans(points, k, seed + level, niter, max_points_per_centroid, init)
        mapping = point_labels[mapping]
        labels[:, level] = mapping
        centroids.append(c)
        points = _normalise_rows(c)
        logger.debug("level %d: k=%d over %d points", level + 1, k, len(point_labels))
    return labels, centroids


def uniform_from_id(seed: int, sample_id: str) -> float:
    """A deterministic uniform in [0, 1) from (seed, sample_id): the same draw whatever the row order or process."""
    digest = hashlib.blake2b(f"{seed}:{sample_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


@dataclass
class RebalanceResult:
    """Per-sample outcome of `rebalance` (arrays aligned with the input rows) and before/after statistics."""

    sample_ids: list[str]
    cluster_labels: np.ndarray  # (n, levels) int64, column 0 the leaf, last the top
    centroids: list[np.ndarray]  # per level, finest first
    concepts: list[list[str]]
    p_cluster: np.ndarray
    p_concept: np.ndarray
    keep_probability: np.ndarray
    sample_weight: np.ndarray  # drop mode: 1 kept / 0 dropped; weight mode: p / mean(p)
    kept: np.ndarray  # bool
    decisions: list[Decision]
    counts: StageCounts
    clusters_per_level: tuple[int, ...]
    cluster_budget: float  # root budget of the cluster balancing (expected samples)
    concept_cap: float  # MetaCLIP t used
    cluster_sizes_before: list[np.ndarray] = field(default_factory=list)  # per level: samples per cluster id
    cluster_sizes_after: list[np.ndarray] = field(default_factory=list)  # kept samples (drop) / weight sum (weight)
    concept_counts_before: dict[str, float] = field(default_factory=dict)
    concept_counts_after: dict[str, float] = field(default_factory=dict)

    def table(self) -> pa.Table:
        """One row per sample: sample_id, cluster_path (leaf first), concepts, probabilities, weight, kept."""
        return pa.table({
            "sample_id": pa.array(self.sample_ids, pa.string()),
            "cluster_path": pa.array(self.cluster_labels.tolist(), pa.list_(pa.int64())),
            "concepts": pa.array(self.concepts, pa.list_(pa.string())),
            "p_cluster": pa.array(self.p_cluster, pa.float64()),
            "p_concept": pa.array(self.p_concept, pa.float64()),
            "keep_probability": pa.array(self.keep_probability, pa.float64()),
            "sample_weight": pa.array(self.sample_weight, pa.float32()),
            "kept": pa.array(self.kept, pa.bool_()),
        })

    def summary(self, top: int = 10) -> dict[str, Any]:
        """Headline numbers: k per level, caps, expected/actual kept, and the largest concepts/top clusters."""
        largest_concepts = sorted(self.concept_counts_before.items(), key=lambda kv: (-kv[1], kv[0]))[:top]
        sizes_top = self.cluster_sizes_before[-1] if self.cluster_sizes_before else np.zeros(0)
        order = np.argsort(-sizes_top, kind="stable")[:top]
        return {
            "total": len(self.sample_ids),
            "kept": int(self.kept.sum()),
            "expected_kept": float(self.keep_probability.sum()),
            "clusters_per_level": list(self.clusters_per_level),
            "cluster_budget": self.cluster_budget,
            "concept_cap": self.concept_cap,
            "largest_concepts": [{"concept": c, "before": n, "after": self.concept_counts_after.get(c, 0.0)}
                                 for c, n in largest_concepts],
            "largest_top_clusters": [{"cluster": int(i), "before": int(sizes_top[i]),
                                      "after": float(self.cluster_sizes_after[-1][i])} for i in order],
        }


def rebalance(sample_ids: Sequence[str], embeddings: np.ndarray, concept_lists: Sequence[Sequence[str]] | None,
              config: RebalanceConfig, source_uris: Sequence[str] | None = None,
              text_keys: Sequence[str | None] | None = None) -> RebalanceResult:
    """Balance a corpus by embedding clusters and metadata concepts; one ledger decision per dropped/downweighted row.

    Args:
        sample_ids: unique ids (sha256 hex), one per row.
        embeddings: (n, d) image embeddings (L2-normalised; float16 is fine).
        concept_lists: matched concepts per row (`curation.concepts.match_concepts`); None: no concepts.
        config: see `RebalanceConfig`.
        source_uris: per-row source URIs recorded in the ledger ("" when None).
        text_keys: per-row normalised metadata text (`curation.concepts.text_key`; "" for none): inside a cut cluster
            a row without a concept is spared when few rows of its cluster share its text. None: no text entries.

    Returns:
        `RebalanceResult`, aligned with the input rows. Decisions: drop mode, 'drop' for each dropped row; weight mode,
        'downweight' for each row with keep probability < 1. Reason: `over_represented_cluster` when p_cluster is the
        smaller of the two probabilities, else `over_represented_concept`; score = keep probability, threshold None.
    """
    ids = [str(s) for s in sample_ids]
    n = len(ids)
    if len(set(ids)) != n:
        raise ValueError("sample_ids must be unique (rebalancing runs after exact deduplication)")
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2 or len(embeddings) != n:
        raise ValueError(f"embeddings must be (n={n}, d), got {embeddings.shape}")
    concepts = [list(dict.fromkeys(c)) for c in concept_lists] if concept_lists is not None else [[] for _ in ids]
    if len(concepts) != n:
        raise ValueError("concept_lists must have one entry per sample")
    uris = list(source_uris) if source_uris is not None else [""] * n
    if text_keys is not None and len(text_keys) != n:
        raise ValueError("text_keys must have one entry per sample")

    # canonical order (by sample_id): clusters and draws do not depend on the row order
    order = np.array(sorted(range(n), key=ids.__getitem__), dtype=np.int64)
    ks = config.clusters_per_level or default_clusters_per_level(n, config.levels)
    sorted_labels, centroids = hierarchical_kmeans(embeddings[order], config.levels, ks, config.seed, config.niter,
                                                   config.max_points_per_centroid, config.init)
    labels = np.empty_like(sorted_labels)
    labels[order] = sorted_labels
    budget = None if config.cluster_budget is None else config.cluster_budget * n
    p_cluster, budget = cluster_keep_probability(labels, budget, config.cluster_cap_factor, config.cluster_cap_share)

    counts_before = concept_counts(concepts)
    t = config.concept_cap
    if t is None:
        t = default_concept_cap(counts_before, n, config.concept_cap_fraction, config.concept_cap_min,
                                config.concept_tail_share)
    p_concept = concept_keep_probability(concepts, t, counts_before)
    if config.cluster_spares_rare_concepts:
        p_cluster = np.maximum(p_cluster, rare_concept_keep_probability(labels[:, -1], concepts, p_cluster, t,
                                                                        text_keys))

    p = np.minimum(p_cluster, p_concept) if config.combine == "min" else p_cluster * p_concept
    if config.mode == "drop":
        draws = np.array([uniform_from_id(config.seed, s) for s in ids])
        kept = draws < p
        weight = kept.astype(np.float32)
    else:
        kept = np.ones(n, dtype=bool)
        weight = (p / p.mean()).astype(np.float32) if n else np.ones(0, np.float32)

    decisions: list[Decision] = []
    counts = StageCounts(total=n, kept=int(kept.sum()))
    kind = "drop" if config.mode == "drop" else "downweight"
    for i in np.flatnonzero(~kept if config.mode == "drop" else p < 1.0).tolist():
        reason = OVER_CLUSTER if p_cluster[i] < p_concept[i] else OVER_CONCEPT
        details = {"cluster_path": labels[i].tolist(), "concepts": concepts[i], "p_cluster": float(p_cluster[i]),
                   "p_concept": float(p_concept[i])}
        if config.mode == "drop":
            counts.dropped[reason] += 1
        else:
            details["sample_weight"] = float(weight[i])
            counts.notes[f"downweighted_{reason}"] += 1
        decisions.append(Decision(ids[i], uris[i], "rebalance", kind, reason, score=float(p[i]), threshold=None,
                                  details=details))

    sizes_before = [np.bincount(labels[:, level], minlength=len(c)) for level, c in enumerate(centroids)]
    sizes_after = [np.bincount(labels[:, level], weights=weight, minlength=len(c))
                   for level, c in enumerate(centroids)]
    counts_after: Counter = Counter()
    for cs, w in zip(concepts, weight.tolist(), strict=True):
        for c in cs:
            counts_after[c] += w
    logger.info("rebalance: %d rows, k=%s, cluster budget %.0f, concept t %.1f, kept %d (expected %.0f)", n, ks,
                budget, t, int(kept.sum()), float(p.sum()))
    return RebalanceResult(
        sample_ids=ids, cluster_labels=labels, centroids=centroids, concepts=concepts, p_cluster=p_cluster,
        p_concept=p_concept, keep_probability=p, sample_weight=weight, kept=kept, decisions=decisions, counts=counts,
        clusters_per_level=tuple(ks), cluster_budget=budget, concept_cap=float(t), cluster_sizes_before=sizes_before,
        cluster_sizes_after=sizes_after, concept_counts_before={c: float(v) for c, v in counts_before.items()},
        concept_counts_after={c: float(counts_after.get(c, 0.0)) for c in counts_before})
