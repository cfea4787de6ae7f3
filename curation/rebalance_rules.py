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

Rare concepts inside a cut cluster (`rare_concept_keep_probability`): Vo et al. cut every member of a dominant
cluster alike, rare titles with its redundant head. A cluster kept at rate r therefore also gives each concept it
holds the MetaCLIP cap r x t, and a member's cluster-view probability is the max over its entries (its cluster, its
(cluster, concept) pairs): a concept with few members there stays whole, the cluster's frequent concepts and its
unnamed members are cut at Vo et al.'s rate, and the cluster's total exceeds its cap only by the rare members kept. A
sample whose metadata text matches no concept has that text as its entry (a title too rare to be a corpus concept is
rare). On the 34 photos that reach rebalancing in the end-to-end test, k-means put 32 in one top cluster, cut to 17:
without the entries every rare title kept 0.36-0.44 and the head concept's expected share after rebalancing was 0.42;
with them the rare titles keep 1.0 and the head's share is 0.25.
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


def rare_concept_keep_probability(top: np.ndarray, concept_lists: Sequence[Sequence[str]], p_cluster: np.ndarray,
                                  t: float, text_keys: Sequence[str | None] | None = None) -> np.ndarray:
    """The keep probability of each sample's (top cluster, concept) entries: MetaCLIP inside a cut cluster.

    A top cluster k that Vo et al.'s sampling keeps at rate r_k (mean `p_cluster` of its members) gives each of its
    concepts the cap r_k x t: a concept with m members in k keeps each with min(1, r_k x t / m), the max over the
    sample's concepts (any rare entry keeps it). In an uncut cluster (r_k = 1) this is the concept view itself.

    A sample with metadata text but no concept (with a vocabulary built from the corpus: none of its n-grams is
    frequent) has its text as its one entry, counted by the samples of the cluster with the same text
    (`curation.concepts.text_key`): a rare title is spared like a rare concept, a text that many share is not.

    Args:
        top: (n,) top-level cluster id of each sample.
        concept_lists: the matched concepts of each sample.
        p_cluster: (n,) Vo et al.'s keep probabilities (`cluster_keep_probability`).
        t: the concept cap (MetaCLIP's t) of the corpus.
        text_keys: per sample its normalised metadata text ("" or None: none); None: no text entries.

    Returns:
        (n,) float64; 0 for a sample with neither concept nor text (nothing but its cluster speaks for it).
    """
    top = np.asarray(top, dtype=np.int64)
    sizes = np.bincount(top)
    rate = np.bincount(top, weights=np.asarray(p_cluster, np.float64), minlength=len(sizes)) / np.maximum(sizes, 1)
    keys = [None] * len(top) if text_keys is None else text_keys
    # a text entry is prefixed with ':', which no concept name (tokens joined by spaces) contains
    entries = [set(c) if c else ({":" + key} if key else set()) for c, key in zip(concept_lists, keys, strict=True)]
    members: Counter = Counter()
    for cluster, mine in zip(top.tolist(), entries, strict=True):
        members.update((cluster, e) for e in mine)
    p = np.zeros(len(top), np.float64)
    for i, (cluster, mine) in enumerate(zip(top.tolist(), entries, strict=True)):
        if mine:
            p[i] = min(1.0, rate[cluster] * t / min(members[(cluster, e)] for e in mine))
    return p


def cluster_keep_probability(labels: np.ndarray, budget: float | None = None, cap_factor: float = 3.0,
                             cap_share: float = 0.25) -> tuple[np.ndarray, float]:
    """Vo et al.'s balanced sampling as a keep probability per sample, from a cluster hierarchy.

    The root budget is water-filled across the top clusters, each cluster's allocation across its children, down to
    the leaves; inside a leaf every sample gets leaf allocation / leaf size.

    Args:
        labels: (n, levels) cluster ids from `hierarchical_kmeans` (column 0 the leaf, last column the top).
        budget: expected number of samples kept. None: sum(min(size, `default_cluster_cap`)) over top clusters.
        cap_factor: see `RebalanceConfig.cluster_cap_factor`.
        cap_share: see `RebalanceConfig.cluster_cap_share`.

    Returns:
        (p, budget): p is (n,) float64 in [0, 1]; budget is the root budget used.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if labels.ndim == 1:
        labels = labels[:, None]
    n, levels = labels.shape
    if n == 0:
        return np.ones(0), 0.0
    top = labels[:, -1]
    top_ids, top_sizes = np.unique(top, return_counts=True)
    if budget is None:
        budget = float(np.minimum(top_sizes, default_cluster_cap(top_sizes, cap_factor, cap_share)).sum())
    alloc = dict(zip(top_ids.tolist(), water_fill(top_sizes, budget).tolist(), strict=True))
    for level in range(levels - 2, -1, -1):
        pairs, sizes = np.unique(labels[:, [level, level + 1]], axis=0, return_counts=True)
        child_alloc: dict[int, float] = {}
        for parent in np.unique(pairs[:, 1]).tolist():
            rows = pairs[:, 1] == parent
            shares = water_fill(sizes[rows], alloc[parent])
            child_alloc.update(zip(pairs[rows, 0].tolist(), shares.tolist(), strict=True))
        alloc = child_alloc
    leaf_ids, leaf_inverse, leaf_sizes = np.unique(labels[:, 0], return_inverse=True, return_counts=True)
    leaf_p = np.array([alloc[i] for i in leaf_ids.tolist()]) / leaf_sizes
    return np.clip(leaf_p[leaf_inverse], 0.0, 1.0), float(budget)


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
