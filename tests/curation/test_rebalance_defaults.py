"""Issue 14 item 2: the default caps cut a concept (and an embedding region) holding about half of a small or a large
corpus, while the samples of rare concepts keep >= 90%."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from curation.rebalance import (
    RebalanceConfig,
    cluster_keep_probability,
    default_cluster_cap,
    default_concept_cap,
    rebalance,
    tail_share_cap,
)
from tests.curation.rebalance_devset import HEAD, dev_set, rare_mask


def share(kept: np.ndarray, head: np.ndarray) -> float:
    return float((kept & head).sum() / kept.sum())


@pytest.mark.parametrize("n, head_share, few", [(400, 0.46, True), (400, 0.5, False), (6000, 0.5, False)])
def test_half_of_the_corpus_is_cut_and_rare_concepts_kept(n, head_share, few):
    ds = dev_set(n, head_share=head_share, few_concepts=few, seed=n)
    result = rebalance(ds.sample_ids, ds.embeddings, ds.concepts, RebalanceConfig())
    # t is 5% of the corpus (at least 20): the head keeps ~10% of itself, far below half of its share
    assert result.concept_cap == max(20.0, 0.05 * n)
    assert share(result.kept, ds.head) <= share(np.ones(n, bool), ds.head) / 2
    rare = rare_mask(ds, 0.01)
    if rare.any():
        assert result.kept[rare].mean() >= 0.9
        assert np.all(result.p_concept[rare] == 1.0)


@pytest.mark.parametrize("n", [400, 6000])
def test_clusters_alone_cut_a_broad_head(n):
    """No concepts: the cluster view on its own cuts the region holding half of the corpus (the old 3 x median rule
    kept all of it at n=400, where the top level has 4 clusters)."""
    ds = dev_set(n, head_share=0.5, seed=n)
    result = rebalance(ds.sample_ids, ds.embeddings, None, RebalanceConfig())
    assert result.p_cluster[ds.head].mean() < 0.6
    assert result.p_cluster[~ds.head].mean() > 0.85
    assert share(result.kept, ds.head) < 0.4


def test_default_caps_are_the_documented_rules():
    assert default_concept_cap(Counter({"a": 500, "b": 3}), n_samples=1000) == 50.0
    assert default_concept_cap(Counter({"a": 5}), n_samples=100) == 20.0  # the floor
    # MetaCLIP 2: t at which the sorted counts reach the tail share of all matches
    counts = Counter({"a": 10, "b": 10, "c": 30, "d": 50})
    assert tail_share_cap(counts, 0.2) == 10 and tail_share_cap(counts, 0.5) == 30
    assert default_concept_cap(counts, n_samples=100, tail_share=0.5, minimum=5) == 30
    # top clusters: equal-share floor, factor x median, share of the corpus
    assert default_cluster_cap(np.array([100, 100, 100, 100])) == 100  # uniform: nothing cut
    assert default_cluster_cap(np.array([200, 80, 70, 50])) == 100  # broad head: cut to 25%
    assert default_cluster_cap(np.array([900] + [10] * 99)) == 30  # dense mass among many: 3 x median
    labels = np.array([[0]] * 200 + [[1]] * 80 + [[2]] * 70 + [[3]] * 50)
    p, budget = cluster_keep_probability(labels)
    assert budget == 300 and p[0] == pytest.approx(0.5) and p[-1] == 1.0
    with pytest.raises(ValueError):
        RebalanceConfig(concept_tail_share=1.0)
    with pytest.raises(ValueError):
        RebalanceConfig(cluster_cap_share=0.0)


def test_tail_share_rule_cuts_the_head_of_a_large_corpus():
    ds = dev_set(6000, head_share=0.5, seed=1)
    result = rebalance(ds.sample_ids, ds.embeddings, ds.concepts, RebalanceConfig(concept_tail_share=0.5))
    assert result.concept_cap < 0.5 * 6000
    head_p = result.p_concept[[HEAD in c for c in ds.concepts]]
    assert head_p.max() < 0.5
