import numpy as np
import pytest

from curation.style.pairs import PairsConfig, build_pairs, strength


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _corpus(sizes=(40, 10, 10), dim=16, seed=0):
    """Styles: tight clusters around random centres, of unequal sizes; content: random directions."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.standard_normal((len(sizes), dim)))
    noisy = [_unit(c + 0.15 * rng.standard_normal((n, dim))) for c, n in zip(centres, sizes, strict=True)]
    style = np.concatenate(noisy)
    content = _unit(rng.standard_normal((sum(sizes), 32)))
    ids = [f"{i:064x}" for i in range(sum(sizes))]
    truth = np.repeat(np.arange(len(sizes)), sizes)
    return ids, style, content, truth


def test_pairs_respect_the_content_bound_and_balance_clusters():
    ids, style, content, truth = _corpus()
    content[1] = content[0]  # a near-duplicate in content and style: never a reference of the other
    creators = {ids[i]: "alice" for i in range(0, 40, 2)} | {ids[i]: "bob" for i in range(40, 50)}
    config = PairsConfig(clusters=3, targets_per_cluster=5, max_content_similarity=0.8)
    out = build_pairs(ids, style, content, creators, config)
    pairs = out.pairs
    assert {p["kind"] for p in pairs} == {"same_creator", "same_style_cluster", "mix"}
    index = {s: i for i, s in enumerate(ids)}
    for p in pairs:
        t = index[p["target_id"]]
        refs = [index[r] for r in p["reference_ids"]]
        assert t not in refs and 1 <= len(refs) <= 3
        assert max(float(content[r] @ content[t]) for r in refs) < 0.8
        assert p["content_similarity"] < 0.8
        assert 0.0 <= p["strength"] <= 1.0
        assert {index[p["target_id"]], *refs} != {0, 1}
        if p["kind"] == "same_creator":
            assert {creators[ids[r]] for r in refs} == {creators[ids[t]]} == {p["creator"]}
        if p["kind"] == "mix":
            assert len(refs) == 2 and p["reference_clusters"][0] != p["reference_clusters"][1]
        if p["kind"] == "same_style_cluster":
            assert set(p["reference_clusters"]) == {p["target_cluster"]}
    # the 40-image style gets no more target slots than the 10-image ones
    targets = {}
    for p in pairs:
        targets.setdefault(p["style_cluster"], set()).add(p["target_id"] if p["kind"] != "mix" else
                                                          p["reference_ids"][0])
    assert sorted(len(v) for v in targets.values()) == [5, 5, 5]
    # the clusters found are the planted styles
    for c in np.unique(out.clusters):
        assert len(set(truth[out.clusters == c])) == 1


def test_pairs_are_deterministic_and_order_independent():
    ids, style, content, _ = _corpus(seed=1)
    a = build_pairs(ids, style, content, {}, PairsConfig(clusters=3, seed=4)).pairs
    perm = np.random.default_rng(0).permutation(len(ids))
    b = build_pairs([ids[i] for i in perm], style[perm], content[perm], {}, PairsConfig(clusters=3, seed=4)).pairs
    assert a == b and a
    assert all(p["kind"] != "same_creator" for p in a)


def test_strength_is_the_rank_among_random_pairs():
    ids, style, content, _ = _corpus(seed=2)
    out = build_pairs(ids, style, content, {}, PairsConfig(clusters=3))
    q = out.strength_quantiles
    assert strength(q[0] - 1, q) == 0.0 and strength(q[-1] + 1, q) == 1.0
    assert strength(float(q[50]), q) == pytest.approx(0.5, abs=0.01)
    same = [p for p in out.pairs if p["kind"] == "same_style_cluster"]
    assert np.median([p["strength"] for p in same]) > 0.6  # same-cluster references are alike in style


def test_too_few_samples_give_no_pairs():
    ids, style, content, _ = _corpus(sizes=(1,))
    assert build_pairs(ids, style, content, {}).pairs == []
