"""Deduplication on tiny synthetic data: each test can fail on a wrong edge, representative or removal rule.

Most tests here check the removal rule on hand-made hashes and embeddings, so verification is off
(`DedupConfig(verify=False)`); verification on real pixels is tested in test_dedup_verify.py and test_dedup_art.py."""

from __future__ import annotations

import numpy as np

from curation.dedup import EXACT, PERCEPTUAL, SEMANTIC, Candidates, DedupConfig, cosine_pairs, deduplicate
from curation.embedding import l2_normalise


def cands(ids, phash, emb, pixels=None, sizes=None, uris=None) -> Candidates:
    n = len(ids)
    return Candidates(
        sample_ids=list(ids), source_uris=list(uris or [f"u/{i}" for i in ids]),
        orientations=np.repeat(np.array(phash, dtype=np.uint64)[:, None], 8, axis=1),
        embeddings=l2_normalise(np.array(emb, dtype=np.float32)),
        pixels=np.array(pixels or [100] * n, dtype=np.int64), byte_size=np.array(sizes or [10] * n, dtype=np.int64))


def basis(k: int, dim: int = 8) -> list[float]:
    v = [0.0] * dim
    v[k] = 1.0
    return v


def test_a_chain_of_similar_pairs_removes_only_copies_of_kept_rows():
    # a ~ b and b ~ c above the threshold, a and c far apart: the closure would remove c too; the SemDeDup rule
    # removes b as a copy of a (kept, best ranked) and keeps c, whose only candidate b was not kept
    config = DedupConfig(phash_threshold=-1, semantic_threshold=0.9, verify=False)
    a, c = np.array([1.0, 0.0]), np.array([np.cos(0.9), np.sin(0.9)])
    b = np.array([np.cos(0.45), np.sin(0.45)])  # cos 0.45 = 0.90 to both
    c_ = cands(["a", "b", "c"], [1, 2, 3], [a.tolist(), b.tolist(), c.tolist()], pixels=[300, 200, 100])
    result = deduplicate(c_, config)
    assert result.keep.tolist() == [True, False, True]
    assert result.decisions[0].duplicate_of == "a"


def test_exact_perceptual_and_semantic_duplicates_with_reasons():
    config = DedupConfig(phash_threshold=4, semantic_threshold=0.95, verify=False)
    c = cands(
        ids=["a", "a", "b", "c", "d", "e"],
        phash=[0, 0, 0b111, 0x00FF00FF00000000, 0x0F0F0F0F0F0F0F0F, 0xF0F0F0F000000000],  # b: 3 bits from a
        emb=[basis(0), basis(0), basis(1), basis(2), [0, 0, 0, 1, 0.1, 0, 0, 0], basis(3)],  # d ~ e semantically
        pixels=[100, 100, 400, 100, 100, 50],
    )
    result = deduplicate(c, config)
    reasons = {d.source_uri: (d.reason, d.duplicate_of) for d in result.decisions}
    # b has the most pixels: it represents {a, a, b}; the second "a" is an exact copy of the first
    assert result.keep.tolist() == [False, False, True, True, True, False]
    assert reasons["u/a"][1] == "b"
    assert reasons["u/e"] == (SEMANTIC, "d")
    by_uri = {d.source_uri: d for d in result.decisions}
    assert by_uri["u/e"].score >= 0.95 and by_uri["u/e"].threshold == 0.95
    assert {d.reason for d in result.decisions} <= {EXACT, PERCEPTUAL, SEMANTIC}
    assert result.edges[EXACT] == 1


def test_representative_prefers_resolution_then_bytes_then_earliest():
    config = DedupConfig(phash_threshold=0, semantic_threshold=2.0, verify=False)
    c = cands(["x", "y", "z"], [5, 5, 5], [basis(0), basis(1), basis(2)], pixels=[10, 10, 10], sizes=[5, 9, 9])
    assert deduplicate(c, config).keep.tolist() == [False, True, False]
    c = cands(["x", "y"], [5, 5], [basis(0), basis(1)], pixels=[10, 10], sizes=[5, 5])
    assert deduplicate(c, config).keep.tolist() == [True, False]


def test_incremental_against_curated_keeps_the_curated_representative():
    config = DedupConfig(phash_threshold=2, rotated_threshold=2, semantic_threshold=0.99, verify=False)
    far = 0x00FF00FF00FF00FF  # 32 bits from 0
    curated = cands(["old1", "old2"], [0, far], [basis(0), basis(1)], pixels=[10, 10])
    new = cands(["old1", "n1", "n2", "n3"], [0, 1, far ^ 0b1, 0xF00000], [basis(0), basis(4), basis(5), basis(1)],
                pixels=[10, 10_000, 10, 10])
    result = deduplicate(new, config, curated=curated)
    assert result.keep.tolist() == [False, False, False, False]
    by_id = {d.sample_id: d for d in result.decisions}
    assert by_id["old1"].reason == EXACT and by_id["old1"].duplicate_of == "old1"
    assert by_id["n1"].duplicate_of == "old1" and by_id["n1"].details["representative_curated_before"]
    assert by_id["n2"].reason == PERCEPTUAL and by_id["n2"].duplicate_of == "old2"
    assert by_id["n3"].reason == SEMANTIC and by_id["n3"].duplicate_of == "old2"


def test_nothing_new_changes_nothing():
    config = DedupConfig()
    empty = cands([], [], np.zeros((0, 8)))
    result = deduplicate(empty, config, curated=cands(["a"], [0], [basis(0)]))
    assert result.keep.size == 0 and result.decisions == []


def test_cosine_pairs_flat_and_ivf_agree():
    rng = np.random.default_rng(0)
    base = l2_normalise(rng.normal(size=(3000, 16)).astype(np.float32))
    queries = l2_normalise(base[:50] + 0.05 * rng.normal(size=(50, 16)).astype(np.float32))
    flat = cosine_pairs(queries, 0.9, base, exact_max=10_000)
    ivf = cosine_pairs(queries, 0.9, base, exact_max=100, nprobe=64)
    assert set(zip(flat[0].tolist(), flat[1].tolist(), strict=True)) == set(zip(ivf[0].tolist(), ivf[1].tolist(),
                                                                                 strict=True))
    assert {(i, i) for i in range(50)} <= set(zip(flat[0].tolist(), flat[1].tolist(), strict=True))


def test_orientation_pairs_take_the_best_orientation_and_dedupe():
    from curation.dedup import orientation_pairs

    far = 0x00FF00FF00FF00FF
    q = np.array([[0, far, far, far, far, far, far, far],      # image 0 upright = 0
                  [far ^ 1, far, far, 1, far, far, far, far],  # image 1: its 4th orientation is 1 bit from 0
                  [0x0F0F0F0F0F0F0F0F] * 8], dtype=np.uint64)  # image 2: far from both in every orientation
    i, j, d = orientation_pairs(q, 2)
    assert list(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == [(0, 1, 1)]
    i, j, d = orientation_pairs(q[1:2], 2, np.array([0, far], dtype=np.uint64))
    assert sorted(zip(i.tolist(), j.tolist(), d.tolist(), strict=True)) == [(0, 0, 1), (0, 1, 0)]


def test_provenance_breaks_ties_before_bytes():
    config = DedupConfig(phash_threshold=0, semantic_threshold=2.0, verify=False)
    c = cands(["cmyk", "rgb"], [5, 5], [basis(0), basis(1)], pixels=[10, 10], sizes=[900, 500])
    assert deduplicate(c, config).keep.tolist() == [True, False]  # bytes decide without provenance
    c.provenance = np.array([0, 1])  # the CMYK copy needed converting, the RGB one did not
    assert deduplicate(c, config).keep.tolist() == [False, True]


def test_a_verified_copy_of_a_removed_copy_goes_to_the_kept_representative(monkeypatch):
    # r (most pixels) is kept; o is verified as r's copy; c is the same picture as o but verification cannot tell
    # it from r directly (a crop of the original against a re-encode): c goes, as a copy of r via o. An UNVERIFIED
    # chain never does this: with verification off c stays (the test above), and d, which verification calls
    # different from o, stays too.
    import curation.dedup as dedup

    same = {("r", "o"), ("o", "c")}

    class Verdict:
        def __init__(self, ok):
            self.same = ok

        def details(self):
            return {"method": "test"}

    monkeypatch.setattr(dedup, "_Pictures", lambda new, curated, nodes: {i: new.sample_ids[i] for i in nodes})
    monkeypatch.setattr(dedup, "same_picture", lambda a, b, config: Verdict((a, b) in same or (b, a) in same))
    v = [basis(0), [1, 0.05, 0, 0, 0, 0, 0, 0], [1, 0.1, 0, 0, 0, 0, 0, 0], [1, 0.12, 0, 0, 0, 0, 0, 0]]
    c_ = cands(["r", "o", "c", "d"], [1, 2, 3, 4], v, pixels=[400, 300, 200, 100])
    result = deduplicate(c_, DedupConfig(phash_threshold=-1, semantic_threshold=0.9))
    assert result.keep.tolist() == [True, False, False, True]
    by_uri = {d.source_uri: d for d in result.decisions}
    assert by_uri["u/o"].duplicate_of == "r" and "verified_against" not in by_uri["u/o"].details
    assert by_uri["u/c"].duplicate_of == "r" and by_uri["u/c"].details["verified_against"] == "u/o"
    assert result.edges["verified_via_copy"] == 1
