"""hamming_pairs is exact: it agrees with a brute-force numpy reference on every path (flat, MIH, MIH's generic path
for big buckets), for self-joins and joins, including empty inputs, duplicates and one giant bucket."""

from __future__ import annotations

import numpy as np
import pytest

from curation import hamming
from curation.hamming import hamming_pairs

THRESHOLDS = [0, 1, 3, 6, 10]


def brute(codes: np.ndarray, threshold: int, others: np.ndarray | None = None):
    """Every pair by an n x m popcount matrix: the reference (tiny inputs only)."""
    base = codes if others is None else others
    dist = np.bitwise_count(codes[:, None] ^ base[None, :]).astype(np.int64)
    near = dist <= threshold
    if others is None:
        near &= np.triu(np.ones_like(near), k=1)
    i, j = np.nonzero(near)
    return i.astype(np.int64), j.astype(np.int64), dist[i, j]


def flip(values: np.ndarray, bits: int, rng: np.random.Generator) -> np.ndarray:
    """Each value with `bits` distinct random bits flipped."""
    out = values.copy()
    for k in range(len(out)):
        for bit in rng.choice(64, bits, replace=False):
            out[k] ^= np.uint64(1) << np.uint64(bit)
    return out


def planted(n: int, seed: int) -> np.ndarray:
    """Random hashes plus planted near-duplicates at every distance 0..12, exact duplicates and a near-0 cluster."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, 2**64, n, dtype=np.uint64)
    for dist in range(13):
        src = rng.integers(0, n, n // 40)
        codes[rng.integers(0, n, len(src))] = flip(codes[src], dist, rng)
    codes[rng.integers(0, n, n // 20)] = codes[0]  # exact duplicates
    blank = rng.integers(0, n, n // 20)  # near-blank images: few bits set, sharing most chunk values
    codes[blank] = flip(np.zeros(len(blank), np.uint64), 2, rng)
    return codes


@pytest.fixture(params=["flat", "mih", "mih-generic"])
def path(request, monkeypatch):
    """Run the test through one strategy; "mih-generic" forces every bucket with 2+ rows onto the block path."""
    if request.param != "flat":
        monkeypatch.setattr(hamming, "_FLAT_ALWAYS", 0)
        monkeypatch.setattr(hamming, "_C_FLAT", 1.0)
        monkeypatch.setattr(hamming, "_C_FLAT_CALL", 1.0)
    else:
        monkeypatch.setattr(hamming, "_FLAT_ALWAYS", 1 << 62)
    if request.param == "mih-generic":
        monkeypatch.setattr(hamming, "_MAX_LEVELS", 1)
        monkeypatch.setattr(hamming, "_BATCH", 64)  # many small batches
    hamming._plan.cache_clear()
    yield request.param
    hamming._plan.cache_clear()


def assert_same(got, want):
    assert all(a.dtype == np.int64 for a in got)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_self_join_matches_brute_force(path, threshold):
    codes = planted(600, seed=threshold)
    got = hamming_pairs(codes, threshold)
    assert_same(got, brute(codes, threshold))
    assert (got[0] < got[1]).all()
    assert len(got[0]) > 0


@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_join_matches_brute_force(path, threshold):
    codes, others = planted(300, seed=100 + threshold), planted(500, seed=200 + threshold)
    others[:50] = flip(codes[:50], min(threshold, 3), np.random.default_rng(threshold))  # pairs across the sets
    got = hamming_pairs(codes, threshold, others)
    assert_same(got, brute(codes, threshold, others))
    assert len(got[0]) >= 50


def test_random_data_many_seeds(path):
    # Uniform random hashes have almost no pairs: plant a few at the threshold and just above it.
    rng = np.random.default_rng(7)
    for seed in range(4):
        codes = np.random.default_rng(seed).integers(0, 2**64, 400, dtype=np.uint64)
        codes[200:210] = flip(codes[:10], 6, rng)
        codes[210:220] = flip(codes[10:20], 7, rng)
        assert_same(hamming_pairs(codes, 6), brute(codes, 6))
        assert_same(hamming_pairs(codes[:150], 6, codes[150:]), brute(codes[:150], 6, codes[150:]))


def test_empty_inputs(path):
    empty = np.empty(0, np.uint64)
    some = np.arange(5, dtype=np.uint64)
    for got in (hamming_pairs(empty, 3), hamming_pairs(empty, 3, some), hamming_pairs(some, 3, empty),
                hamming_pairs(some, -1), hamming_pairs(some, -1, some)):
        assert [len(a) for a in got] == [0, 0, 0]
        assert all(a.dtype == np.int64 for a in got)


def test_single_hash(path):
    one = np.array([123], np.uint64)
    assert [len(a) for a in hamming_pairs(one, 10)] == [0, 0, 0]
    assert_same(hamming_pairs(one, 0, one), (np.array([0]), np.array([0]), np.array([0])))


def test_all_identical_is_one_big_bucket(path):
    codes = np.full(300, 0xDEADBEEF, np.uint64)
    i, j, d = hamming_pairs(codes, 4)
    assert len(i) == 300 * 299 // 2
    assert (d == 0).all() and (i < j).all()
    assert len(set(zip(i.tolist(), j.tolist(), strict=True))) == len(i)
    i, j, d = hamming_pairs(codes[:40], 0, codes)
    assert len(i) == 40 * 300 and (d == 0).all()


def test_big_bucket_of_distinct_values(path):
    # 400 distinct hashes that agree on every bit but the lowest 10: every chunk above bit 10 is one bucket.
    rng = np.random.default_rng(3)
    codes = np.uint64(0xA5A5_5A5A_F0F0_0000) + rng.choice(1 << 10, 400, replace=False).astype(np.uint64)
    codes = np.concatenate([codes, rng.integers(0, 2**64, 200, dtype=np.uint64)])
    for threshold in (1, 3, 6):
        assert_same(hamming_pairs(codes, threshold), brute(codes, threshold))
        assert_same(hamming_pairs(codes[:250], threshold, codes[250:]), brute(codes[:250], threshold, codes[250:]))


def test_duplicates_expand_to_every_row(path):
    base = np.array([0, 1, 3, 0xFF, 2**63], np.uint64)
    codes = base[[0, 0, 1, 1, 1, 2, 3, 4, 4]]
    for threshold in (0, 1, 2, 8):
        assert_same(hamming_pairs(codes, threshold), brute(codes, threshold))
        assert_same(hamming_pairs(codes, threshold, codes[::-1].copy()), brute(codes, threshold, codes[::-1].copy()))


def test_threshold_is_inclusive_and_capped(path):
    a = np.array([0], np.uint64)
    b = np.array([0b111, 0b1111, 2**64 - 1], np.uint64)
    assert hamming_pairs(a, 3, b)[1].tolist() == [0]
    assert hamming_pairs(a, 4, b)[1].tolist() == [0, 1]
    assert hamming_pairs(a, 100, b)[2].tolist() == [3, 4, 64]


def test_accepts_python_ints_and_signed_views():
    codes = np.array([2**64 - 1, 2**64 - 2, 5], np.uint64)
    want = brute(codes, 1)
    assert_same(hamming_pairs(codes.view(np.int64), 1), want)
    assert_same(hamming_pairs([int(c) for c in codes], 1), want)


def test_plan_is_exact_by_pigeonhole():
    # Whatever the cost model picks, the probed chunks must cover threshold + 1 "worth" on disjoint bits.
    for n in (10_000, 1_000_000):
        for threshold in range(0, 13):
            for self_join in (True, False):
                plan, _ = hamming._plan(n, n // 3 + 1, threshold, self_join)
                assert sum(r + 1 for _, _, r in plan) >= threshold + 1
                bits = [(s, s + w) for s, w, _ in plan]
                assert all(hi <= lo2 for (_, hi), (lo2, _) in zip(bits, bits[1:], strict=False))
                assert bits[-1][1] <= 64
