"""Concept rebalancing on a synthetic corpus with one planted head concept (60%, a tight embedding cluster) and many
rare concepts: each test can fail on a wrong probability, draw, decision or statistic."""

from __future__ import annotations

import json

import numpy as np
import pytest

from curation.decisions import decisions_table
from curation.rebalance import (
    OVER_CLUSTER,
    OVER_CONCEPT,
    RebalanceConfig,
    cluster_keep_probability,
    concept_keep_probability,
    default_clusters_per_level,
    hierarchical_kmeans,
    rebalance,
    uniform_from_id,
    water_fill,
)

HEAD = "product shot"


def corpus(seed: int = 0, n_head: int = 1200, n_rare: int = 100, per_rare: int = 8, dim: int = 32):
    """60% tight 'product shot' cluster + 100 rare concepts of 8 samples, each around its own direction."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=dim)
    emb = [centre / np.linalg.norm(centre) + 0.02 * rng.normal(size=(n_head, dim))]
    concepts = [[HEAD] for _ in range(n_head)]
    for k in range(n_rare):
        c = rng.normal(size=dim)
        emb.append(c / np.linalg.norm(c) + 0.15 * rng.normal(size=(per_rare, dim)))
        concepts += [[f"rare {k}"] for _ in range(per_rare)]
    emb = np.concatenate(emb).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"{i:064x}" for i in rng.permutation(len(emb))]
    return ids, emb.astype(np.float16), concepts  # float16, like the features table


@pytest.fixture(scope="module")
def data():
    return corpus()


def head_share(kept: np.ndarray, concepts: list[list[str]]) -> float:
    head = np.array([HEAD in c for c in concepts])
    return float((kept & head).sum() / kept.sum())


def test_water_fill_and_cluster_probability():
    alloc = water_fill(np.array([10, 100, 5]), 45)
    np.testing.assert_allclose(alloc, [10, 30, 5])  # cap 30: the small ones keep everything
    np.testing.assert_allclose(water_fill(np.array([3, 4]), 100), [3, 4])
    # two top clusters (sizes 8 and 2); the big one has leaves of 6 and 2
    labels = np.array([[0, 0]] * 6 + [[1, 0]] * 2 + [[2, 1]] * 2)
    p, budget = cluster_keep_probability(labels, budget=6)
    # top: 6 split -> (4, 2); inside top 0: 4 split between leaves (6, 2) -> (2, 2)
    np.testing.assert_allclose(p, [2 / 6] * 6 + [1.0] * 2 + [1.0] * 2)
    p, budget = cluster_keep_probability(labels, budget=None, cap_factor=1.0)  # cap = median (5) of (8, 2)
    assert budget == 7 and p[-1] == 1.0 and p[0] < 1.0


def test_concept_probability_metaclip():
    lists = [["a"]] * 10 + [["b"]] * 2 + [["a", "b"]] + [[]]
    p = concept_keep_probability(lists, t=2)
    assert p[0] == pytest.approx(2 / 11)  # 'a' seen in 11 samples
    np.testing.assert_allclose(p[10:12], 2 / 3)  # 'b' seen in 3 samples
    assert p[12] == pytest.approx(2 / 3)  # max over its concepts: max(2/11, 2/3)
    assert p[13] == 1.0  # no concept: governed by clusters only
    assert np.all(concept_keep_probability(lists, t=20) == 1.0)  # rare concepts kept whole
    # default t: the 0.95 quantile of the counts, at least 20 -> nothing capped in so small a corpus
    assert np.all(concept_keep_probability(lists, t=None) == 1.0)


def test_hierarchical_kmeans_shapes_and_hierarchy(data):
    _, emb, _ = data
    labels, centroids = hierarchical_kmeans(emb, levels=3, ks=(40, 8, 3), seed=0, niter=10)
    assert labels.shape == (len(emb), 3) and [c.shape[0] for c in centroids] == [40, 8, 3]
    # the path is a tree: a leaf has exactly one parent
    for level in range(2):
        pairs = np.unique(labels[:, level:level + 2], axis=0)
        assert len(np.unique(pairs[:, 0])) == len(pairs)
    assert default_clusters_per_level(2000, 2) == (45, 7)
    assert default_clusters_per_level(3, 2) == (1, 1)


def test_head_share_halved_and_rare_kept(data):
    ids, emb, concepts = data
    result = rebalance(ids, emb, concepts, RebalanceConfig(seed=1))
    before = head_share(np.ones(len(ids), bool), concepts)
    after = head_share(result.kept, concepts)
    assert before == pytest.approx(0.6) and after <= before / 2
    rare = np.array([HEAD not in c for c in concepts])
    assert result.kept[rare].mean() >= 0.95
    # ledger: every dropped row has one decision with the dominating reason and the details
    assert len(result.decisions) == int((~result.kept).sum())
    assert result.counts.balanced() and result.counts.kept == int(result.kept.sum())
    d = result.decisions[0]
    assert d.stage == "rebalance" and d.decision == "drop" and d.threshold is None
    assert d.reason in (OVER_CLUSTER, OVER_CONCEPT) and set(d.details) == {"cluster_path", "concepts", "p_cluster",
                                                                          "p_concept"}
    head_drops = [x for x in result.decisions if HEAD in x.details["concepts"]]
    assert all(x.reason == OVER_CONCEPT for x in head_drops if x.details["p_concept"] < x.details["p_cluster"])
    assert decisions_table(result.decisions, "run", "v").num_rows == len(result.decisions)
    json.dumps(result.summary())
    # statistics: the head concept count falls, rare counts stay
    assert result.concept_counts_before[HEAD] == 1200 and result.concept_counts_after[HEAD] <= 100
    assert sum(result.cluster_sizes_after[-1]) == result.kept.sum()
    assert result.table().num_rows == len(ids)


def test_clusters_alone_cut_a_dense_mass(data):
    ids, emb, concepts = data
    result = rebalance(ids, emb, None, RebalanceConfig(seed=0))
    head = np.array([HEAD in c for c in concepts])
    assert result.p_cluster[head].mean() < 0.5 and result.p_cluster[~head].mean() > 0.95
    assert head_share(result.kept, concepts) < 0.45
    assert {d.reason for d in result.decisions} == {OVER_CLUSTER}


def test_deterministic_and_row_order_independent(data):
    ids, emb, concepts = data
    config = RebalanceConfig(seed=3)
    a = rebalance(ids, emb, concepts, config)
    b = rebalance(ids, emb, concepts, config)
    np.testing.assert_array_equal(a.kept, b.kept)
    perm = np.random.default_rng(7).permutation(len(ids))
    c = rebalance([ids[i] for i in perm], emb[perm], [concepts[i] for i in perm], config)
    np.testing.assert_array_equal(a.kept[perm], c.kept)
    np.testing.assert_allclose(a.keep_probability[perm], c.keep_probability)
    np.testing.assert_array_equal(a.cluster_labels[perm], c.cluster_labels)
    assert uniform_from_id(3, ids[0]) == uniform_from_id(3, ids[0]) != uniform_from_id(4, ids[0])
    other_seed = rebalance(ids, emb, concepts, RebalanceConfig(seed=4))
    assert not np.array_equal(a.kept, other_seed.kept)


def test_weight_mode_keeps_everything(data):
    ids, emb, concepts = data
    result = rebalance(ids, emb, concepts, RebalanceConfig(mode="weight", combine="product"))
    assert result.kept.all() and result.counts.n_dropped == 0
    assert result.sample_weight.mean() == pytest.approx(1.0, rel=1e-4)
    np.testing.assert_allclose(result.keep_probability, result.p_cluster * result.p_concept)
    low = result.keep_probability < 1
    assert len(result.decisions) == int(low.sum())
    assert {d.decision for d in result.decisions} == {"downweight"}
    head = np.array([HEAD in c for c in concepts])
    weighted_head = result.sample_weight[head].sum() / result.sample_weight.sum()
    assert weighted_head <= 0.3
    assert result.sample_weight[~head].min() > 1.0


def test_explicit_budget_and_caps(data):
    ids, emb, concepts = data
    exact = RebalanceConfig(cluster_budget=0.5, concept_cap=1e9, seed=0, cluster_spares_rare_concepts=False)
    result = rebalance(ids, emb, concepts, exact)
    assert result.concept_cap == 1e9 and np.all(result.p_concept == 1.0)
    assert result.p_cluster.sum() == pytest.approx(0.5 * len(ids), rel=1e-6)
    # sparing rare concepts (the default) keeps every concept below r x t on top of the budget: with t = 1e9 that
    # is every sample of this corpus, all of which carry a concept
    spared = rebalance(ids, emb, concepts, RebalanceConfig(cluster_budget=0.5, concept_cap=1e9, seed=0))
    assert np.all(spared.p_cluster == 1.0)
    with pytest.raises(ValueError):
        RebalanceConfig(combine="max")
    with pytest.raises(ValueError):
        rebalance(["a", "a"], np.eye(2, dtype=np.float32), None, RebalanceConfig())
