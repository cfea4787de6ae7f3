"""Pairs of 64-bit hashes within a Hamming distance, without an O(n^2) matrix in memory.

Exact reference implementation: faiss `IndexBinaryFlat` range search in query blocks (C++ popcount, memory bounded
by the block). Fast for up to ~100k hashes.
"""

from __future__ import annotations

import numpy as np

from curation.hashing import to_bytes


def hamming_pairs(codes: np.ndarray, threshold: int, others: np.ndarray | None = None,
                  block: int = 16384) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs within `threshold` bits.

    Args:
        codes: uint64 hashes (the queries; also the database when `others` is None).
        threshold: largest Hamming distance reported (inclusive).
        others: uint64 hashes of a second set (e.g. everything curated before); None for a self-join.
        block: queries per range-search call (bounds memory).

    Returns:
        (i, j, distance) int64 arrays: `i` indexes `codes`; `j` indexes `others` (or `codes`, with i < j).
    """
    import faiss

    queries = to_bytes(codes)
    base = queries if others is None else to_bytes(others)
    if len(queries) == 0 or len(base) == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, empty
    index = faiss.IndexBinaryFlat(64)
    index.add(base)
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(queries), block):
        lims, dist, ids = index.range_search(queries[start : start + block], threshold + 1)
        counts = np.diff(lims).astype(np.int64)
        qi = np.repeat(np.arange(start, start + len(counts), dtype=np.int64), counts)
        ids = ids.astype(np.int64)
        keep = qi < ids if others is None else np.ones(len(ids), bool)
        out_i.append(qi[keep])
        out_j.append(ids[keep])
        out_d.append(dist[keep].astype(np.int64))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
