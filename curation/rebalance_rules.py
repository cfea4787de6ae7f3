"""Keep-probability rules of `curation.rebalance`: Vo et al.'s balanced sampling over a cluster hierarchy, MetaCLIP's
per-concept cap, and the corpus-derived defaults of both. Pure numpy on labels and concept lists (no k-means here).

Default caps are derived from the corpus so that they act at any size (DESIGN: a concept or a cluster holding half
of the corpus is cut, whether the corpus has 400 or 100M samples):

- concept t = max(`concept_cap_min`, `concept_cap_fraction` x n): a concept matched by more than 5% of the samples
  keeps about 5% of the corpus; every concept below that keeps everything. A quantile of the per-concept counts (the
  earlier default) is the head's own count when few concepts exist, so it never cut a head that held 46% of a small
  corpus, and on a 2,700-concept Zipf tail it fell to ~20 and cut 40% of the non-head samples. MetaCLIP 2's rule
  (t such that the concepts below t hold a fixed share of all matches) is `concept_tail_share`.
- top-cluster cap = max(n / k_top, min(`cluster_cap_factor` x median top cluster, `cluster_cap_share` x n)): a top
  cluster that stands out against the others (a dense mass) or holds more than a quarter of the corpus is cut, never
  below the equal share n / k_top (with 4 top clusters a uniform corpus has 25% in each). The factor alone missed a
  broad head at small n: with 4 top clusters, half of the corpus is only ~2x the median.

Who pays for a cut cluster (`concept_groups`): a top cluster's allocation is first water-filled between its concept
groups (each member is grouped by its concept with the fewest members in that cluster; members without a concept
form one group), then each group's allocation down the k-means hierarchy as Vo et al. do. Water-filling gives a
small group everything, so the cut falls on the cluster's redundant head (the concept, or the unnamed mass, that
fills it) and a rare concept inside a dominant cluster stays whole; the cluster's total is the same either way. With
uniform leaves instead (Vo et al. alone), a 36-photo drop whose k-means had one top cluster of 32 cut every member to
~0.4, rare titles with it, and the head concept's share after rebalancing rose from 0.25 to 0.42.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np


def water_fill(sizes: np.ndarray, budget: float) -> np.ndarray:
    """Share `budget` between groups as equally as possible: allocation min(size, cap) with sum = budget.

    Args:
        sizes: (m,) non-negative group sizes.
        budget: total to share (clipped to [0, sum(sizes)]).

    Returns:
        (m,) float64 allocations.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    total = sizes.sum()
    if budget >= total:
        return sizes.copy()
    budget = max(0.0, float(budget))
    order = np.sort(sizes)
    # cap c solves sum(min(s, c)) = budget; between sorted sizes the sum is linear in c
    before = np.concatenate([[0.0], np.cumsum(order)[:-1]])  # sum of the sizes below order[i]
    remaining = len(order) - np.arange(len(order))
    filled = before + remaining * order  # sum(min(s, order[i]))
    i = int(np.searchsorted(filled, budget, side="right"))
    cap = (budget - before[i]) / remaining[i] if i < len(order) else order[-1]
    return np.minimum(sizes, cap)


def default_cluster_cap(top_sizes: np.ndarray, cap_factor: float = 3.0, cap_share: float = 0.25) -> float:
    """The default cap of a top cluster: max(n / k, min(cap_factor x median size, cap_share x n)).

    The factor catches a dense mass among many top clusters, the share a broad head among few (at small n the top
    level has ~4 clusters and half of the corpus is only ~2x the median); the floor n / k is the equal share, so a
    corpus whose top clusters are all about the same size is never cut.
    """
    sizes = np.asarray(top_sizes, dtype=np.float64)
    if len(sizes) == 0:
        return 0.0
    n = sizes.sum()
    return float(max(n / len(sizes), min(cap_factor * np.median(sizes), cap_share * n)))


def concept_groups(top: np.ndarray, concept_lists: Sequence[Sequence[str]]) -> np.ndarray:
    """Each sample's concept group inside its top cluster, for `cluster_keep_probability(groups=...)`.

    A sample joins the group of its concept with the fewest members in its own top cluster (ties: the name), so a
    sample that carries the cluster's head concept and a rare one counts as rare (MetaCLIP: any rare entry keeps a
    sample); samples without a concept share group -1. Ids are dense per concept name, the same whatever the row order.

    Args:
        top: (n,) top-level cluster id of each sample.
        concept_lists: the matched concepts of each sample.

    Returns:
        (n,) int64 group ids (-1: no concept); only (top cluster, group) pairs are meaningful.
    """
    top = np.asarray(top, dtype=np.int64).tolist()
    members: Counter = Counter()
    for cluster, concepts in zip(top, concept_lists, strict=True):
        members.update((cluster, c) for c in set(concepts))
    chosen = [min(concepts, key=lambda c, k=cluster: (members[(k, c)], c)) if concepts else None
              for cluster, concepts in zip(top, concept_lists, strict=True)]
    ids = {name: i for i, name in enumerate(sorted({c for c in chosen if c is not None}))}
    return np.array([-1 if c is None else ids[c] for c in chosen], dtype=np.int64)


def _dense(*columns: np.ndarray) -> np.ndarray:
    """Dense int64 ids of the distinct rows of the given columns."""
    _, inverse = np.unique(np.stack(columns, axis=1), axis=0, return_inverse=True)
    return inverse.reshape(-1).astype(np.int64)


def _split_top_by_group(labels: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """The hierarchy with a level of (top cluster, group) nodes inserted under each top cluster; every level below is
    split the same way, so each node still has one parent."""
    top = labels[:, -1]
    node = _dense(top, groups)
    below = [_dense(labels[:, level], node) for level in range(labels.shape[1] - 1)]
    return np.column_stack([*below, node, top])


def cluster_keep_probability(labels: np.ndarray, budget: float | None = None, cap_factor: float = 3.0,
                             cap_share: float = 0.25, groups: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Vo et al.'s balanced sampling as a keep probability per sample, from a cluster hierarchy.

    The root budget is water-filled across the top clusters, each cluster's allocation across its children, down to
    the leaves; inside a leaf every sample gets leaf allocation / leaf size. With `groups`, a top cluster's allocation
    is first water-filled across its groups (`concept_groups`) and each group's down its own part of the hierarchy.

    Args:
        labels: (n, levels) cluster ids from `hierarchical_kmeans` (column 0 the leaf, last column the top).
        budget: expected number of samples kept. None: sum(min(size, `default_cluster_cap`)) over top clusters.
        cap_factor: see `RebalanceConfig.cluster_cap_factor`.
        cap_share: see `RebalanceConfig.cluster_cap_share`.
        groups: (n,) group id of each sample inside its top cluster; None: no groups (Vo et al. as published).

    Returns:
        (p, budget): p is (n,) float64 in [0, 1]; budget is the root budget used.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim == 1:
        labels = labels[:, None]
    n = len(labels)
    if n == 0:
        return np.ones(0), 0.0
    top = labels[:, -1]
    top_ids, top_sizes = np.unique(top, return_counts=True)
    if budget is None:
        budget = float(np.minimum(top_sizes, default_cluster_cap(top_sizes, cap_factor, cap_share)).sum())
    if groups is not None:
        labels = _split_top_by_group(labels, np.asarray(groups, dtype=np.int64))
    alloc = dict(zip(top_ids.tolist(), water_fill(top_sizes, budget).tolist(), strict=True))
    for level in range(labels.shape[1] - 2, -1, -1):
        pairs, sizes = np.unique(labels[:, [level, level + 1]], axis=0, return_counts=True)
        child_alloc: dict[int, float] = {}
        for parent in np.unique(pairs[:, 1]).tolist():
            rows = pairs[:, 1] == parent
            shares = water_fill(sizes[rows], alloc[parent])
            child_alloc.update(zip(pairs[rows, 0].tolist(), shares.tolist(), strict=True))
        alloc = child_alloc
    leaf_ids, leaf_inverse, leaf_sizes = np.unique(labels[:, 0], return_inverse=True, return_counts=True)
    leaf_p = np.array([alloc[i] for i in leaf_ids.tolist()]) / leaf_sizes
    return np.clip(leaf_p[leaf_inverse.reshape(-1)], 0.0, 1.0), float(budget)


def concept_counts(concept_lists: Sequence[Sequence[str]]) -> Counter:
    """Samples per concept (a concept counts once per sample)."""
    counts: Counter = Counter()
    for concepts in concept_lists:
        counts.update(set(concepts))
    return counts


def tail_share_cap(counts: Counter, tail_share: float) -> float:
    """MetaCLIP 2's t from a tail share p: the count at which the concepts sorted by count reach p of all matches.

    Concepts counted below t then hold about p of the matches (MetaCLIP 2 derives p from English's t and applies it
    per language; `curation` applies it per corpus).
    """
    values = np.sort(np.fromiter(counts.values(), np.float64))
    if len(values) == 0:
        return 0.0
    portion = np.cumsum(values) / values.sum()
    return float(values[int(np.abs(portion - tail_share).argmin())])


def default_concept_cap(counts: Counter, n_samples: int, fraction: float = 0.05, minimum: float = 20.0,
                        tail_share: float | None = None) -> float:
    """MetaCLIP's t when none is given: max(minimum, fraction x n_samples), or MetaCLIP 2's `tail_share_cap`.

    A fraction of the corpus acts the same whatever the number of distinct concepts: with one concept on half of
    the samples t is 10% of that concept's count, with thousands of small ones nothing below the fraction is cut.
    """
    if tail_share is not None:
        return float(max(minimum, tail_share_cap(counts, tail_share)))
    return float(max(minimum, fraction * n_samples))


def concept_keep_probability(concept_lists: Sequence[Sequence[str]], t: float | None,
                             counts: Counter | None = None) -> np.ndarray:
    """MetaCLIP balancing: p = max over the sample's concepts of min(1, t / count); 1 for a sample with no concept.

    Args:
        concept_lists: the matched concepts of each sample.
        t: the per-concept cap (None: `default_concept_cap` over the samples of `concept_lists`).
        counts: samples per concept (computed from `concept_lists` when None; pass the counts of a larger pool to
            balance a slice against it).

    Returns:
        (n,) float64 keep probabilities.
    """
    counts = concept_counts(concept_lists) if counts is None else counts
    t = default_concept_cap(counts, len(concept_lists)) if t is None else float(t)
    p = np.ones(len(concept_lists), np.float64)
    for i, concepts in enumerate(concept_lists):
        if concepts:
            p[i] = min(1.0, max(t / max(counts[c], 1) for c in concepts))
    return p
