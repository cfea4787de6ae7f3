"""Issue 14 item 2, embedding clusters: a dominant cluster is cut by default, but the samples inside it that carry a
rare concept keep >= 90% (the e2e case: a 34-photo drop whose k-means put 32 photos in one top cluster)."""

from __future__ import annotations

import numpy as np
import pytest

from curation.concepts import text_key
from curation.rebalance import (
    RebalanceConfig,
    cluster_keep_probability,
    rare_concept_keep_probability,
    rebalance,
)
from tests.curation.rebalance_devset import HEAD, mixed_dev_set


def test_entries_inside_a_cut_cluster():
    # top 0: 10 members (6 head, 2 unnamed, 1 rare 'a', 1 head + rare 'b'); top 1: 4 members of 'c'
    concepts = [[HEAD]] * 6 + [[], []] + [["a"], [HEAD, "b"]] + [["c"]] * 4
    labels = np.array([[0]] * 10 + [[1]] * 4)
    p_vo, _ = cluster_keep_probability(labels, budget=9)  # water-fill (10, 4) -> (5, 4): top 0 kept at r = 0.5
    np.testing.assert_allclose(p_vo, [0.5] * 10 + [1.0] * 4)
    entries = rare_concept_keep_probability(labels[:, -1], concepts, p_vo, t=4)
    # r x t = 2: the head (7 members in top 0) gets 2/7, a concept with 1 member stays whole, no concept gets nothing
    np.testing.assert_allclose(entries[:6], 2 / 7)
    np.testing.assert_allclose(entries[6:8], 0.0)
    np.testing.assert_allclose(entries[8:10], 1.0)  # 'b' is rare in top 0 even though the sample also has the head
    np.testing.assert_allclose(entries[10:], 1.0)  # uncut cluster: the concept view's own min(1, t / count)
    p = np.maximum(p_vo, entries)
    np.testing.assert_allclose(p[:8], 0.5)  # the cluster's redundant head and its unnamed members: Vo et al.'s rate
    # a concept with 3 members in the cut cluster keeps r x t / 3 = 2/3 of them, more than the cluster's rate
    three = rare_concept_keep_probability(labels[:, -1], [["x"]] * 3 + [[]] * 7 + [["c"]] * 4, p_vo, t=4)
    np.testing.assert_allclose(three[:3], 2 / 3)
    perm = np.random.default_rng(0).permutation(14)
    again = rare_concept_keep_probability(labels[perm, -1], [concepts[i] for i in perm], p_vo[perm], t=4)
    np.testing.assert_allclose(again, entries[perm])


def test_text_entries_for_samples_without_a_concept():
    """The end-to-end case: rare titles are below the corpus vocabulary's min count, so they match no concept; their
    text is their entry. A text shared by many members of the cut cluster ('untitled') is not spared."""
    labels = np.array([[0]] * 10 + [[1]] * 4)
    p_vo, _ = cluster_keep_probability(labels, budget=9)
    concepts = [[HEAD]] * 4 + [[]] * 6 + [["c"]] * 4
    keys = [text_key(HEAD)] * 4 + [text_key("Lighthouse at dusk"), text_key(["origami", "crane"]), "", "", "", ""]
    keys += [text_key("c")] * 4
    entries = rare_concept_keep_probability(labels[:, -1], concepts, p_vo, t=4, text_keys=keys)
    np.testing.assert_allclose(entries[4:6], 1.0)  # one member each: a rare title
    np.testing.assert_allclose(entries[6:10], 0.0)  # no text at all: only the cluster speaks
    np.testing.assert_allclose(entries[:4], 0.5)  # a concept is its entry even with text
    untitled = rare_concept_keep_probability(labels[:, -1], [[]] * 14, p_vo, t=4, text_keys=["untitled"] * 14)
    np.testing.assert_allclose(untitled[:10], 0.5 * 4 / 10)  # r x t / 10 < Vo et al.'s 0.5: not spared
    assert text_key(["A  Title!", "", "tag"]) == "a title | tag"


def test_a_small_sub_cluster_of_a_cut_cluster_stays_whole():
    """Rarity without a concept: a leaf much smaller than its siblings inside a cut top cluster is kept whole by
    the water-filling (Vo et al.), the big leaf pays."""
    labels = np.array([[0, 0]] * 30 + [[1, 0]] * 3 + [[2, 1]] * 10)
    p, _ = cluster_keep_probability(labels, budget=25)  # top (33, 10) -> (15, 10); leaves (30, 3) -> (12, 3)
    np.testing.assert_allclose(p, [12 / 30] * 30 + [1.0] * 13)


@pytest.mark.parametrize("n, concept_cap, as_text", [(40, 4.0, False), (40, 4.0, True), (20000, None, False),
                                                     (20000, None, True)])
def test_dominant_cluster_cut_and_rare_concepts_inside_it_kept(n, concept_cap, as_text):
    """One concept on ~half of the corpus AND one embedding mass on half, rare concepts inside the mass. n=40 names
    t = 4 as the end-to-end test does (the default t's floor of 20 is half of so small a corpus). `as_text`: the
    rare names are unmatched titles (below the vocabulary's min count), not concepts, as in the end-to-end drop."""
    ds = mixed_dev_set(n, seed=n)
    concepts = [[] if rare else c for c, rare in zip(ds.concepts, ds.rare_in_mass, strict=True)] if as_text \
        else ds.concepts
    keys = [text_key(c) for c in ds.concepts]  # the rare samples' titles are their names; the unnamed have no text
    result = rebalance(ds.sample_ids, ds.embeddings, concepts, RebalanceConfig(concept_cap=concept_cap),
                       text_keys=keys)
    p = result.keep_probability
    unnamed = np.array([not c for c in ds.concepts])  # no concept and no text
    vo, _ = cluster_keep_probability(result.cluster_labels)  # the cluster rule without the concept entries
    # the mass is one dominant cluster and is cut: its members without a concept keep Vo et al.'s rate, well below 1
    assert vo[ds.mass].mean() < 0.6
    np.testing.assert_allclose(result.p_cluster[unnamed], vo[unnamed])
    assert result.p_cluster[ds.mass & unnamed].mean() < 0.6
    # ... while the rare concepts inside it keep everything (Vo et al. alone cut them with the rest)
    assert np.all(result.p_cluster[ds.rare_in_mass] == 1.0) and result.kept[ds.rare_in_mass].mean() >= 0.9
    assert vo[ds.rare_in_mass].mean() < 0.6
    # the head concept's share is halved (expected, from the keep probabilities)
    assert p[ds.head].sum() / p.sum() <= ds.head.mean() / 2
    if n >= 1000:  # samples outside the mass and the head: nearly all kept
        assert result.kept[~ds.mass & ~ds.head].mean() >= 0.9
        assert (result.kept & ds.head).sum() / result.kept.sum() <= ds.head.mean() / 2
