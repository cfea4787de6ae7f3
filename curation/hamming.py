"""Pairs of 64-bit hashes within a Hamming distance: exact, with memory linear in the input (plus the output).

Two exact strategies; `hamming_pairs` picks the cheaper one with a cost model measured on 2 x86 cores:

- **flat**: faiss `IndexBinaryFlat` range search in query blocks, O(nq * nd). No index to build, so it is kept for
  tiny inputs (about 1k x 1k) and as the reference the tests compare against.
- **multi-index hashing** (MIH, Norouzi et al. 2012), vectorized in numpy. Disjoint bit chunks k = 1..K are each
  probed with a radius r_k such that sum(r_k + 1) >= threshold + 1. Two hashes within `threshold` differ in at most
  r_k bits on at least one probed chunk (otherwise they would differ in at least sum(r_k + 1) > threshold bits), so
  looking up every chunk key XOR every flip mask of at most r_k bits finds all of them: recall 1.0. Every candidate
  is verified with a popcount of the full 64 bits: no false pairs. A pair found on several chunks is reported only
  by the first chunk that can find it, which its XOR tells for free; this replaces a global `np.unique` over up to
  billions of candidates, and makes the chunks independent (they run on threads).

Lookups go to a dense table of 2^width slots holding full hashes, so one gather + XOR + popcount verifies a candidate
without materialising it (~2 ns). Rows sharing a chunk value (a bucket) are spread over "levels" (the a-th row of
each bucket), one table per level. Rows of unusually big buckets, e.g. thousands of near-blank images, only probe
the level tables; pairs between two big buckets go through a generic path that expands (bucket, bucket) blocks in
bounded batches. Exact duplicates are collapsed to one value first and expanded at the end. Memory is
O(n + 2^width + output): only the output can be super-linear, when the input really has that many pairs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from math import comb, sqrt

import numpy as np

from curation.hashing import to_bytes

_BATCH = 1 << 22
"""Candidate pairs materialised at once on the generic path (a few 8-byte arrays of this length)."""
_SCAN_BLOCK = 1 << 16
"""Probe rows per block of the lookup loop (its buffers, ~27 bytes a row, stay in L2)."""
_MAX_THREADS = 2
"""Chunks probed at once (each holds its own tables and buffers: memory grows with this)."""
_MAX_WIDTH = 22
"""Widest chunk: a table of 2^22 uint64 slots is 32 MB, independent of n."""
_MAX_LEVELS = 256
"""At most this many level tables per chunk; rows of bigger buckets take the generic block expansion."""

# Cost model in seconds, fitted (non-negative least squares over single-chunk runs at 100k..1M hashes) on the 2-core
# benchmark machine with bench/dedup_scale.py's data. Only the ratios matter: they choose the chunking, the number
# of levels and flat vs MIH. A wrong constant costs speed, never exactness.
_C_FLAT = 0.4e-9  # one 64-bit distance inside faiss IndexBinaryFlat (both cores)
_C_FLAT_CALL = 15e-3  # fixed cost of the flat path (index, threads)
_FLAT_ALWAYS = 1 << 20  # below this many (query, database) pairs the flat path wins or both take milliseconds
_C_ROW_BIT = 12e-9  # per row and chunk bit: key, argsort, levels, per-top-bit subsets of a level
_C_SLOT = 40e-9  # per table slot: dense count/start arrays, level choice, the table itself
_C_CALL = 8e-6  # per (mask, probe block): numpy call overhead of one lookup round
_C_CAND = 25e-9  # per candidate on the generic path: expansion, gathers, popcount, filter


def _c_lookup(width: int) -> float:
    """Per (probe row, mask): XOR, gather, XOR, popcount, compare; the gather slows once the table leaves L2."""
    return (2.1e-9, 3.0e-9, 3.6e-9, 4.4e-9)[min(max(width - 19, 0), 3)]


def hamming_pairs(codes: np.ndarray, threshold: int, others: np.ndarray | None = None,
                  block: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of 64-bit hashes within `threshold` bits, exactly.

    Args:
        codes: uint64 hashes (the queries; also the database when `others` is None).
        threshold: largest Hamming distance reported (inclusive); a negative one reports nothing.
        others: uint64 hashes of a second set (e.g. everything curated before); None for a self-join.
        block: queries per range-search call on the brute-force path (bounds its memory).

    Returns:
        (i, j, distance) int64 arrays sorted by (i, j): `i` indexes `codes`; `j` indexes `others`, or `codes` with
        i < j for a self-join.

    Raises:
        ValueError: len(codes) * len(others) >= 2^63 / 65 (pairs are sorted as one packed int64 each).

    Memory is linear in the inputs plus the output: ~250 MB above the input for 1M spread-out hashes (two chunks
    in flight). Uses up to `_MAX_THREADS` threads (fewer if the process's CPU affinity is narrower).
    """
    codes = np.ascontiguousarray(codes, dtype=np.uint64).ravel()
    self_join = others is None
    base = codes if self_join else np.ascontiguousarray(others, dtype=np.uint64).ravel()
    if len(codes) == 0 or len(base) == 0 or threshold < 0:
        return _empty()
    if len(codes) * len(base) * 65 >= 2**63:
        raise ValueError(f"{len(codes)} x {len(base)} hashes: too many to index pairs with int64")
    threshold = min(int(threshold), 64)
    if _use_flat(len(codes), len(base), threshold, self_join):
        return _flat_pairs(codes, None if self_join else base, threshold, block)

    # Equal hashes are distance 0 from one another: search the distinct values only, expand at the end.
    uq, inv_q = np.unique(codes, return_inverse=True)
    ud, inv_d = (uq, inv_q) if self_join else np.unique(base, return_inverse=True)
    if _use_flat(len(uq), len(ud), threshold, self_join):
        a, b, d = _flat_pairs(uq, None if self_join else ud, threshold, block)
    else:
        a, b, d = _mih_pairs(uq, ud, threshold, self_join)
    return _expand_duplicates(a, b, d, inv_q, inv_d, self_join)


def _empty() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """No pairs."""
    return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)


def _use_flat(nq: int, nd: int, threshold: int, self_join: bool) -> bool:
    """Whether brute force is cheaper than the best MIH plan (tiny inputs skip the planning)."""
    return nq * nd <= _FLAT_ALWAYS or _C_FLAT_CALL + nq * nd * _C_FLAT <= _plan(nq, nd, threshold, self_join)[1]


def _flat_pairs(codes: np.ndarray, others: np.ndarray | None, threshold: int,
                block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact brute force: faiss IndexBinaryFlat range search, `block` queries at a time."""
    import faiss

    queries = to_bytes(codes)
    base = queries if others is None else to_bytes(others)
    index = faiss.IndexBinaryFlat(64)
    index.add(base)
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(queries), block):
        # faiss reports distances strictly below the radius.
        lims, dist, ids = index.range_search(queries[start : start + block], threshold + 1)
        counts = np.diff(lims).astype(np.int64)
        qi = np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts)
        ids = ids.astype(np.int64)
        keep = qi < ids if others is None else np.ones(len(ids), bool)
        out_i.append(qi[keep])
        out_j.append(ids[keep])
        out_d.append(dist[keep].astype(np.int64))
    return _sorted(np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d), len(base))


# ---------------------------------------------------------------------------------------------------------------
# Planning


def _n_masks(width: int, radius: int) -> int:
    """Flip masks of at most `radius` bits in a `width`-bit chunk."""
    return sum(comb(width, k) for k in range(min(radius, width) + 1))


def _chunk_cost(nq: int, nd: int, width: int, radius: int, self_join: bool) -> float:
    """Estimated seconds to probe one chunk, for uniformly spread hashes."""
    slots = float(1 << width)
    lam_q, lam_d = nq / slots, nd / slots
    if self_join:
        # Same level: each unordered bucket pair once; a row of rank r also probes the r tables below it.
        lookups = nq * (1 + lam_q) / 2
        levels = lam_q + 3 * sqrt(lam_q) + 2
        rows = nq
    else:
        lookups = nq + (nq * lam_q + nd * lam_d) / 2
        levels = max(lam_q + 3 * sqrt(lam_q), lam_d + 3 * sqrt(lam_d)) + 2
        rows = nq + nd
    fixed = _C_ROW_BIT * rows * width + _C_SLOT * slots
    if levels > _MAX_LEVELS:  # most rows take the generic path: every row against its partner bucket
        return fixed + _n_masks(width, radius) * _C_CAND * (nq * (lam_d + 1) / (2 if self_join else 1))
    calls = 2 * levels + lookups / _SCAN_BLOCK
    return fixed + _n_masks(width, radius) * (_C_CALL * calls + _c_lookup(width) * lookups)


@lru_cache(maxsize=256)
def _plan(nq: int, nd: int, threshold: int, self_join: bool) -> tuple[tuple[tuple[int, int, int], ...], float]:
    """Cheapest chunking under the cost model: [(shift, width, radius)] and its estimated seconds.

    A knapsack over the 64 bits: a chunk costs its width in bits and is worth radius + 1; the worths must add up to
    threshold + 1. Chunks need not cover all 64 bits (unprobed bits are still verified), which lets a small threshold
    use a few wide, sparse chunks rather than many narrow, crowded ones.
    """
    need = threshold + 1
    options = [(w, r, _chunk_cost(nq, nd, w, r, self_join))
               for w in range(1, _MAX_WIDTH + 1) for r in range(min(threshold, w) + 1)]
    best: dict[tuple[int, int], tuple[float, list[tuple[int, int]]]] = {(0, 0): (0.0, [])}
    for bits in range(65):
        for worth in range(need):
            if (bits, worth) not in best:
                continue
            base_cost, chunks = best[(bits, worth)]
            for w, r, cost in options:
                state = (bits + w, min(need, worth + r + 1))
                if state[0] <= 64 and (state not in best or base_cost + cost < best[state][0]):
                    best[state] = (base_cost + cost, chunks + [(w, r)])
    cost, chunks = min((v for (_, worth), v in best.items() if worth == need), key=lambda v: v[0])
    plan, shift = [], 0
    for w, r in chunks:
        plan.append((shift, w, r))
        shift += w
    return tuple(plan), cost


# ---------------------------------------------------------------------------------------------------------------
# Multi-index hashing


def _flip_masks(width: int, radius: int) -> list[np.ndarray]:
    """Masks with 1..radius bits set in a `width`-bit chunk, grouped by their highest set bit (index 0..width-1).

    A self-join probes a key K against K ^ f only from the side whose bit (highest bit of f) is 0, so every
    unordered pair of buckets of one level is visited once.
    """
    by_top: list[list[int]] = [[] for _ in range(width)]
    frontier = [(0, -1)]  # (mask, its highest bit)
    for _ in range(min(radius, width)):
        grown = []
        for mask, top in frontier:
            for bit in range(top + 1, width):
                by_top[bit].append(mask | (1 << bit))
                grown.append((mask | (1 << bit), bit))
        frontier = grown
    return [np.array(masks, dtype=np.int64) for masks in by_top]


def _choose_levels(count: np.ndarray, width: int, self_join: bool) -> int:
    """How many level tables to build; rows of bigger buckets only probe the tables (and each other, generically).

    Each level costs a few numpy calls per mask whatever its size, and a bucket of c rows spread over levels costs
    ~c^2/2 lookups per mask; a row of a big bucket costs one lookup per level. Decided on the real bucket sizes, so
    skewed data (a few big buckets of near-duplicates) keeps the levels the background needs, not hundreds.
    """
    hist = np.bincount(count).astype(np.float64)  # hist[c]: buckets with c rows
    hist[0] = 0
    if len(hist) <= 2:
        return 1
    sizes = np.arange(len(hist), dtype=np.float64)
    levels = np.arange(1, min(len(hist) - 1, _MAX_LEVELS) + 1)
    rows = sizes * hist
    beyond = rows.sum() - np.cumsum(rows)[levels]  # rows in buckets bigger than L
    lookups = np.cumsum(hist * sizes * sizes / 2)[levels] + beyond * levels
    big_pairs = beyond * beyond / float(1 << width)  # big rows against big partner buckets, generic path
    cost = levels * _C_CALL * (3 if self_join else 2) + lookups * _c_lookup(width) + big_pairs * _C_CAND
    return int(levels[np.argmin(cost)])


class _Side:
    """One side of the join for one chunk: distinct hashes sorted by chunk key, split into levels and big buckets.

    Level a holds the a-th row (in sorted order) of every bucket with at most `levels` rows; it becomes a dense
    table when probed. Rows are also kept grouped by level (key-ascending inside a level), so "all rows above
    level a" is one contiguous slice whose keys sweep the table in order (cache-friendly gathers).
    """

    def __init__(self, hashes: np.ndarray, shift: int, width: int, self_join: bool):
        key = ((hashes >> np.uint64(shift)) & np.uint64((1 << width) - 1)).astype(np.int64)
        self.order = np.argsort(key, kind="stable")  # sorted position -> index into `hashes`
        self.key = key[self.order]
        self.hash = hashes[self.order]
        self.count = np.bincount(key, minlength=1 << width).astype(np.int64)
        self.start = np.cumsum(self.count) - self.count
        self.levels = _choose_levels(self.count, width, self_join)
        rank = np.arange(len(key)) - self.start[self.key]
        pos = np.flatnonzero(self.count[self.key] <= self.levels)
        pos = pos[np.argsort(rank[pos].astype(np.uint16 if self.levels < 1 << 16 else np.int64), kind="stable")]
        self.level_start = np.searchsorted(rank[pos], np.arange(self.levels + 1))
        self.pos, self.pos_key, self.pos_hash = pos, self.key[pos], self.hash[pos]
        self.big = np.flatnonzero(self.count > self.levels)  # keys of big buckets
        big = np.flatnonzero(self.count[self.key] > self.levels)  # their rows, key-ascending
        self.big_key, self.big_hash, self.big_ids = self.key[big], self.hash[big], self.order[big]

    def rows(self, lo: int, hi: int | None = None) -> slice:
        """Slice of (pos, pos_key, pos_hash) holding levels lo .. hi - 1 (all above lo when hi is None)."""
        return slice(self.level_start[min(lo, self.levels)], self.level_start[self.levels if hi is None else hi])


class _Table:
    """One dense table of 2^width slots, reloaded level after level (only the touched slots are rewritten).

    A slot holds the hash of the loaded level's row with that chunk key. An empty slot holds a sentinel whose chunk
    bits are the complement of the slot's key: a lookup landing there is recognised (its XOR's chunk bits are not
    the flip mask) even when its distance happens to pass.
    """

    def __init__(self, shift: int, width: int):
        self.shift, self.mask = np.uint64(shift), np.uint64((1 << width) - 1)
        self.slots = (np.arange(1 << width, dtype=np.uint64) ^ self.mask) << self.shift
        self.keys = np.empty(0, np.int64)

    def load(self, side: _Side, level: int) -> np.ndarray:
        """The slots holding `level` of `side`."""
        self.slots[self.keys] = (self.keys.astype(np.uint64) ^ self.mask) << self.shift
        rows = side.rows(level, level + 1)
        self.keys = side.pos_key[rows]
        self.slots[self.keys] = side.pos_hash[rows]
        return self.slots


class _Collector:
    """Verified pairs of one chunk: keeps those within the threshold that no earlier chunk could find."""

    def __init__(self, threshold: int, self_join: bool):
        self.threshold, self.self_join = threshold, self_join
        self.earlier: list[tuple[np.uint64, int]] = []  # (bit mask, radius) of the chunks already probed
        self.a: list[np.ndarray] = []
        self.b: list[np.ndarray] = []
        self.d: list[np.ndarray] = []

    def add(self, a: np.ndarray, b: np.ndarray, x: np.ndarray) -> None:
        """a, b: indexes into the distinct query / database values; x: their XOR."""
        dist = np.bitwise_count(x)
        keep = np.flatnonzero(dist <= self.threshold)
        a, b, x, dist = a[keep], b[keep], x[keep], dist[keep]
        if self.earlier:
            # An earlier chunk within its radius has already reported this pair.
            keep = np.ones(len(x), bool)
            for chunk_mask, radius in self.earlier:
                keep &= np.bitwise_count(x & chunk_mask) > radius
            a, b, dist = a[keep], b[keep], dist[keep]
        if self.self_join:
            a, b = np.minimum(a, b), np.maximum(a, b)
        # Compact until the final expansion: 9 bytes a pair instead of 24 (skewed data can have 10^7+ pairs).
        self.a.append(a.astype(np.int32 if len(a) and a.max() < 2**31 else np.int64))
        self.b.append(b.astype(np.int32 if len(b) and b.max() < 2**31 else np.int64))
        self.d.append(dist)


def _mih_pairs(uq: np.ndarray, ud: np.ndarray, threshold: int,
               self_join: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact pairs between arrays of distinct values by multi-index hashing (see the module docstring)."""
    plan, _ = _plan(len(uq), len(ud), threshold, self_join)
    # Chunks are independent (each knows which earlier chunks report a pair), so they can run on threads: numpy
    # releases the GIL inside each call of the hot loop.
    workers = min(_workers(), len(plan))
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(lambda k: _probe_chunk(uq, ud, threshold, self_join, plan, k), range(len(plan))))
    else:
        parts = [_probe_chunk(uq, ud, threshold, self_join, plan, k) for k in range(len(plan))]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def _workers() -> int:
    """Threads for the chunks: the CPUs this process may run on (a Ray task pinned to fewer gets fewer)."""
    try:
        return max(1, min(len(os.sched_getaffinity(0)), _MAX_THREADS))
    except AttributeError:  # not on Linux
        return max(1, min(os.cpu_count() or 1, _MAX_THREADS))


def _probe_chunk(uq: np.ndarray, ud: np.ndarray, threshold: int, self_join: bool,
                 plan: tuple[tuple[int, int, int], ...], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs found by chunk k of the plan and by no earlier chunk."""
    shift, width, radius = plan[k]
    out = _Collector(threshold, self_join)
    out.earlier = [(np.uint64(((1 << w) - 1) << s), r) for s, w, r in plan[:k]]
    sq = _Side(uq, shift, width, self_join)
    sd = sq if self_join else _Side(ud, shift, width, self_join)
    by_top = _flip_masks(width, radius)
    tables = _Table(shift, width)
    scan = _Scanner(shift, width, threshold, out)
    all_masks = np.concatenate([np.zeros(1, np.int64), *by_top])
    if self_join:
        for a in range(sq.levels):
            table = tables.load(sq, a)
            # Same level: only key pairs K < K ^ f, i.e. bit top(f) of K is 0 (mask 0 would pair a row with
            # itself). Rows above: every mask; pairs inside a bucket come from mask 0.
            same = sq.rows(a, a + 1)
            keys, hashes, pos = sq.pos_key[same], sq.pos_hash[same], sq.pos[same]
            for top, masks in enumerate(by_top):
                if len(masks):
                    sub = np.flatnonzero((keys >> top) & 1 == 0)
                    scan(keys[sub], hashes[sub], sq.order[pos[sub]], sq, a, table, masks, swap=False)
            above = sq.rows(a + 1)
            scan(sq.pos_key[above], sq.pos_hash[above], sq.order[sq.pos[above]], sq, a, table, all_masks,
                 swap=False)
            scan(sq.big_key, sq.big_hash, sq.big_ids, sq, a, table, all_masks, swap=False)
    else:
        # Query level b x database level a: from the database table when b >= a, else from the query table.
        for a in range(sd.levels):
            table = tables.load(sd, a)
            rows = sq.rows(a)
            scan(sq.pos_key[rows], sq.pos_hash[rows], sq.order[sq.pos[rows]], sd, a, table, all_masks, swap=False)
            scan(sq.big_key, sq.big_hash, sq.big_ids, sd, a, table, all_masks, swap=False)
        for b in range(sq.levels):
            table = tables.load(sq, b)
            rows = sd.rows(b + 1)
            scan(sd.pos_key[rows], sd.pos_hash[rows], sd.order[sd.pos[rows]], sq, b, table, all_masks, swap=True)
            scan(sd.big_key, sd.big_hash, sd.big_ids, sq, b, table, all_masks, swap=True)
    del tables
    _big_buckets(sq, sd, by_top, self_join, out)
    if not out.a:
        return _empty()
    return np.concatenate(out.a), np.concatenate(out.b), np.concatenate(out.d)


class _Scanner:
    """The hot loop: probe rows looked up in one level table under every flip mask."""

    def __init__(self, shift: int, width: int, threshold: int, out: _Collector):
        self.shift, self.width, self.threshold, self.out = shift, width, threshold, out

    def __call__(self, keys: np.ndarray, hashes: np.ndarray, ids: np.ndarray, owner: _Side, level: int,
                 table: np.ndarray, masks: np.ndarray, swap: bool) -> None:
        """Verify probe rows (keys, hashes, ids) against slot key ^ f of `table` (level `level` of `owner`)."""
        n = len(keys)
        if not n or not len(masks):
            return
        # Per mask: XOR, gather, XOR, popcount, compare into preallocated buffers (fresh arrays would page-fault on
        # every call), over blocks of key-sorted probes: the buffers stay in L2 and each block's lookups hit a
        # narrow, cached window of the table. ~2 ns a lookup against ~5 ns unblocked on a 2^21 table.
        size = min(n, _SCAN_BLOCK)
        slot = np.empty(size, np.int64)
        x = np.empty(size, np.uint64)
        dist = np.empty(size, np.uint8)
        near = np.empty(size, bool)
        mask_list = masks.tolist()
        hit_rows, hit_masks = [], []
        for lo in range(0, n, size):
            k, h = keys[lo : lo + size], hashes[lo : lo + size]
            m = len(k)
            s_, x_, d_, n_ = slot[:m], x[:m], dist[:m], near[:m]
            for f in mask_list:
                np.bitwise_xor(k, f, out=s_)
                np.take(table, s_, out=x_)
                np.bitwise_xor(x_, h, out=x_)
                np.bitwise_count(x_, out=d_)
                np.less_equal(d_, self.threshold, out=n_)
                rows = np.flatnonzero(n_)
                if len(rows):
                    hit_rows.append(rows + lo)
                    hit_masks.append(np.full(len(rows), f, np.int64))
        if not hit_rows:
            return
        rows, f = np.concatenate(hit_rows), np.concatenate(hit_masks)
        slot = keys[rows] ^ f
        x = hashes[rows] ^ table[slot]
        chunk = ((x >> np.uint64(self.shift)) & np.uint64((1 << self.width) - 1)).astype(np.int64)
        real = chunk == f  # not a sentinel
        rows, slot, x = rows[real], slot[real], x[real]
        # The table holds the owner's level-th row of each bucket: bucket start + level in sorted positions.
        a, b = ids[rows], owner.order[owner.start[slot] + level]
        if swap:
            a, b = b, a
        self.out.add(a, b, x)


def _big_buckets(sq: _Side, sd: _Side, by_top: list[np.ndarray], self_join: bool, out: _Collector) -> None:
    """Pairs of two rows of big buckets (a big row against a level row is a table lookup), by expanding blocks."""
    masks = np.concatenate(by_top)  # nonzero masks; mask 0 handled below
    if self_join:
        big = sq.big
        if not len(big):
            return
        # Mask 0: pairs inside each big bucket.
        for pa, pb in _expand_units(*_within_group_units(sq.start[big], sq.count[big])):
            out.add(sq.order[pa], sq.order[pb], sq.hash[pa] ^ sq.hash[pb])
        for k, p in _partners(big, masks):
            # A pair of big buckets is visited from both sides: keep it once (k < p).
            keep = (sq.count[p] > sq.levels) & (k < p)
            _emit_blocks(sq, k[keep], sq, p[keep], out)
        return
    for k, p in _partners(sq.big, np.concatenate([np.zeros(1, np.int64), masks])):
        keep = sd.count[p] > sd.levels
        _emit_blocks(sq, k[keep], sd, p[keep], out)


def _partners(keys: np.ndarray, masks: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(key, key ^ mask) for every key and mask, in batches of about _BATCH."""
    if not len(keys) or not len(masks):
        return
    step = max(1, _BATCH // len(keys))
    for lo in range(0, len(masks), step):
        m = masks[lo : lo + step]
        yield np.repeat(keys, len(m)), (keys[:, None] ^ m[None, :]).ravel()


def _emit_blocks(sq: _Side, kq: np.ndarray, sd: _Side, kd: np.ndarray, out: _Collector) -> None:
    """Verify every row of query bucket kq[i] against every row of database bucket kd[i]."""
    if not len(kq):
        return
    cq = sq.count[kq]
    # One unit per query row: (its position, first position of the database bucket, database bucket size).
    rows = np.repeat(sq.start[kq], cq) + _ranks(cq)
    for pa, pb in _expand_units(rows, np.repeat(sd.start[kd], cq), np.repeat(sd.count[kd], cq)):
        out.add(sq.order[pa], sd.order[pb], sq.hash[pa] ^ sd.hash[pb])


def _ranks(counts: np.ndarray) -> np.ndarray:
    """0..c-1 for every c in counts, concatenated."""
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(np.cumsum(counts) - counts, counts)


def _expand_units(pa: np.ndarray, pb0: np.ndarray, lens: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Expand units (pa, pb0 .. pb0 + len - 1) to position pairs, in batches of about _BATCH pairs."""
    keep = lens > 0
    pa, pb0, lens = pa[keep], pb0[keep], lens[keep]
    ends = np.cumsum(lens)
    lo = 0
    while lo < len(lens):
        # Units until _BATCH pairs, at least one: a huge bucket goes alone, at most n pairs.
        done = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, done + _BATCH, side="right")))
        ln = lens[lo:hi]
        yield np.repeat(pa[lo:hi], ln), np.repeat(pb0[lo:hi], ln) + _ranks(ln)
        lo = hi


def _within_group_units(starts: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Units (p, p + 1, rows after p) covering every p < q pair inside each group of consecutive positions."""
    offs = _ranks(counts)
    rows = np.repeat(starts, counts) + offs
    return rows, rows + 1, np.repeat(counts, counts) - 1 - offs


# ---------------------------------------------------------------------------------------------------------------
# Back from distinct values to rows


def _expand_duplicates(a: np.ndarray, b: np.ndarray, d: np.ndarray, inv_q: np.ndarray, inv_d: np.ndarray,
                       self_join: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of distinct values (a, b) -> pairs of input rows, plus the distance-0 pairs among equal rows."""
    q_rows, q_start, q_count = _groups(inv_q)
    d_rows, d_start, d_count = (q_rows, q_start, q_count) if self_join else _groups(inv_d)
    nd = len(inv_d)
    parts = []
    ca, cb = q_count[a], d_count[b]
    single = (ca == 1) & (cb == 1)  # the common case: both values occur once
    parts.append(_pack(q_rows[q_start[a[single]]], d_rows[d_start[b[single]]], d[single], nd, self_join))
    a, b, d, ca, cb = a[~single], b[~single], d[~single], ca[~single], cb[~single]
    if len(a):
        # Every row of value a with every row of value b.
        lens = np.repeat(cb, ca)
        i0, j0 = np.repeat(q_start[a], ca) + _ranks(ca), np.repeat(d_start[b], ca)
        parts.append(_pack(q_rows[np.repeat(i0, lens)], d_rows[np.repeat(j0, lens) + _ranks(lens)],
                           np.repeat(np.repeat(d, ca), lens), nd, self_join))
    if self_join:
        multi = np.flatnonzero(q_count >= 2)
        for pa, pb in _expand_units(*_within_group_units(q_start[multi], q_count[multi])):
            parts.append(_pack(q_rows[pa], q_rows[pb], np.zeros(len(pa), np.int64), nd, self_join))
    return _unpack(parts, nd)


def _groups(inverse: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped by value id: (rows ordered by id, start of each id in it, rows per id)."""
    inverse = inverse.ravel()
    rows = np.argsort(inverse, kind="stable")
    count = np.bincount(inverse)
    return rows, np.cumsum(count) - count, count


def _pack(i: np.ndarray, j: np.ndarray, d: np.ndarray, nd: int, self_join: bool) -> np.ndarray:
    """One int64 per pair, (i * nd + j) * 65 + d: sorting it orders the pairs by (i, j) at a plain sort's cost."""
    if self_join:
        i, j = np.minimum(i, j), np.maximum(i, j)
    key = i.astype(np.int64) * np.int64(nd)
    key += j
    key *= 65
    key += d
    return key


def _unpack(parts: list[np.ndarray], nd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sorted (i, j, distance) int64 arrays from packed pairs."""
    key = np.concatenate(parts) if parts else np.empty(0, np.int64)
    key.sort()
    ij, d = np.divmod(key, 65)
    del key
    i, j = np.divmod(ij, np.int64(nd))
    return i, j, d


def _sorted(i: np.ndarray, j: np.ndarray, d: np.ndarray, nd: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs ordered by (i, j), so both strategies return identical arrays."""
    return _unpack([_pack(i, j, d, nd, self_join=False)], nd)
