"""Deduplication: exact (sha256) -> perceptual (pHash Hamming with an orientation search) -> semantic (cosine of
embeddings), union-find over all three kinds of edge, one representative per component.

Incremental: `deduplicate` takes the new rows and, optionally, everything curated before (its hashes plus a faiss
index over its embeddings). Earlier representatives always stay (shards may already be built from them); new rows
that join a component of theirs are dropped as their duplicates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from curation.decisions import Decision
from curation.hamming import hamming_pairs

DEDUP_CODE_VERSION = "dedup-1"
EXACT, PERCEPTUAL, SEMANTIC = "exact_duplicate", "perceptual_duplicate", "semantic_duplicate"


@dataclass(frozen=True)
class DedupConfig:
    """Thresholds of the three duplicate tests (defaults chosen by `bench/dedup_eval.py`, see BENCHMARKS.md)."""

    phash_threshold: int = 8
    """Largest pHash Hamming distance between the upright images that makes a perceptual duplicate (-1 disables)."""
    rotated_threshold: int = 4
    """Largest distance between one image's flipped/rotated pHash and the other's upright one. Tighter than the
    upright bound: 7 extra orientations give 7 extra chances to collide, and true flips/rotations match at 0-2."""
    semantic_threshold: float = 0.91
    """Smallest cosine similarity of embeddings that makes a semantic duplicate (> 1 disables)."""
    exact_search_max: int = 20_000
    """Up to this many vectors the semantic search is exact (flat); above, an IVF index (SemDeDup-style clusters)."""
    ivf_nprobe: int = 16
    """Clusters visited per query in the IVF search."""


@dataclass
class Candidates:
    """The rows being deduplicated: ids, hashes, embeddings and what ranks a representative."""

    sample_ids: list[str]
    source_uris: list[str]
    orientations: np.ndarray  # uint64 (n, 8): pHash of each orientation, upright first
    embeddings: np.ndarray  # float32 (n, d), L2-normalised
    pixels: np.ndarray  # width * height
    byte_size: np.ndarray
    provenance: np.ndarray | None = None  # higher is better: a named licence, stored pixels used as they are

    def __len__(self) -> int:
        return len(self.sample_ids)


class UnionFind:
    """Disjoint sets over 0..n-1 with path halving and union by size."""

    def __init__(self, n: int) -> None:
        self.parent = np.arange(n, dtype=np.int64)
        self.size = np.ones(n, dtype=np.int64)

    def find(self, x: int) -> int:
        """The root of `x`'s set."""
        parent = self.parent
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return int(x)

    def union(self, a: int, b: int) -> None:
        """Merge the sets of `a` and `b`."""
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if self.size[ra] < self.size[rb]:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.size[ra] += self.size[rb]


def orientation_pairs(queries: np.ndarray, threshold: int, base_upright: np.ndarray | None = None,
                      rotated_threshold: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs whose pHashes match upright within `threshold` bits, or flipped/rotated within `rotated_threshold`.

    Args:
        queries: (n, 8) orientation hashes of the images being checked (upright first).
        threshold: largest upright-to-upright distance reported.
        base_upright: (m,) upright hashes to check against; None for a self-join of the queries (then i < j).
        rotated_threshold: largest distance of a flipped/rotated query hash to an upright one (default: threshold).

    Returns:
        (i, j, distance), one row per pair with its smallest qualifying distance.
    """
    base = queries[:, 0] if base_upright is None else base_upright
    rotated_threshold = threshold if rotated_threshold is None else rotated_threshold
    ui, uj, ud = hamming_pairs(np.ascontiguousarray(queries[:, 0]), threshold,
                               None if base_upright is None else base_upright)
    ri, rj, rd = (hamming_pairs(np.ascontiguousarray(queries[:, 1:].reshape(-1)), rotated_threshold, base)
                  if rotated_threshold >= 0 else (np.empty(0, np.int64),) * 3)
    i = np.concatenate([ui, ri // 7])
    j = np.concatenate([uj, rj])
    d = np.concatenate([ud, rd])
    if base_upright is None:
        keep = i != j
        i, j, d = np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep]), d[keep]
    if len(i) == 0:
        return i, j, d
    key = i * np.int64(len(base)) + j
    order = np.lexsort((d, key))
    first = np.ones(len(order), dtype=bool)
    first[1:] = key[order][1:] != key[order][:-1]
    keep = order[first]
    return i[keep], j[keep], d[keep]


def cosine_pairs(queries: np.ndarray, threshold: float, base: np.ndarray | None = None,
                 exact_max: int = 50_000, nprobe: int = 16, index=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs with cosine similarity >= threshold (rows are L2-normalised).

    Args:
        queries: (n, d) float32.
        threshold: smallest similarity reported.
        base: (m, d) float32 database; None for a self-join (then i < j).
        exact_max: databases up to this size use an exact flat index; larger ones an IVF index.
        nprobe: IVF clusters visited per query.
        index: a ready faiss index over `base` (e.g. loaded from storage); built when None.

    Returns:
        (i, j, similarity) arrays.
    """
    import faiss

    empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32))
    if len(queries) == 0 or threshold > 1.0:
        return empty
    database = queries if base is None else base
    if index is None:
        if len(database) == 0:
            return empty
        index = build_semantic_index(database, exact_max)
    if index.ntotal == 0:
        return empty
    if hasattr(index, "nprobe"):
        index.nprobe = nprobe
    elif hasattr(faiss, "extract_index_ivf"):
        try:
            faiss.extract_index_ivf(index).nprobe = nprobe
        except RuntimeError:
            pass  # a flat index: nothing to probe
    # faiss range search on inner product keeps results strictly above the radius
    lims, sims, ids = index.range_search(np.ascontiguousarray(queries, dtype=np.float32),
                                         float(np.nextafter(np.float32(threshold), np.float32(-1))))
    counts = np.diff(lims).astype(np.int64)
    qi = np.repeat(np.arange(len(queries), dtype=np.int64), counts)
    ids = ids.astype(np.int64)
    keep = qi < ids if base is None else ids >= 0
    return qi[keep], ids[keep], sims[keep].astype(np.float32)


def build_semantic_index(vectors: np.ndarray, exact_max: int = 50_000):
    """A faiss inner-product index over L2-normalised vectors: flat (exact) when small, IVF when large."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    dim = vectors.shape[1]
    if len(vectors) <= exact_max:
        index = faiss.IndexFlatIP(dim)
    else:
        nlist = int(min(65536, max(64, 4 * math.sqrt(len(vectors)))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(0)
        sample = vectors[rng.choice(len(vectors), size=min(len(vectors), nlist * 64), replace=False)]
        index.train(sample)
    index.add(vectors)
    return index


@dataclass
class DedupResult:
    """What happened to the new rows."""

    keep: np.ndarray  # bool per new row
    decisions: list[Decision]
    components: int  # components among the new rows that contain at least one duplicate
    edges: dict[str, int]


def _rank(c: Candidates, order_offset: int = 0) -> np.ndarray:
    """Representative preference, higher is better: resolution, then provenance (a licence; no CMYK/16-bit/palette
    conversion needed), then bytes (the original over re-encodes), then earliest (lower index)."""
    n = len(c)
    provenance = c.provenance if c.provenance is not None else np.zeros(n, dtype=np.int64)
    return np.lexsort((-np.arange(n) - order_offset, c.byte_size, provenance, c.pixels))  # ascending: last is best


def deduplicate(new: Candidates, config: DedupConfig, curated: Candidates | None = None,
                curated_index=None) -> DedupResult:
    """Decide which new rows are duplicates of each other or of what was curated before.

    Args:
        new: rows of this increment, in a stable order (earlier rows win ties).
        config: thresholds.
        curated: representatives kept by earlier increments (may be empty or None).
        curated_index: a faiss index over `curated.embeddings` (built when None).

    Returns:
        `DedupResult`: a keep mask over `new`, one `dedup` drop decision per removed row (with `duplicate_of`,
        the score of its strongest link and the threshold), and edge counts per kind.
    """
    n = len(new)
    m = len(curated) if curated is not None else 0
    uf = UnionFind(n + m)
    # strongest evidence per new row, lower key is stronger: exact, then perceptual (small distance), then semantic
    best: dict[int, tuple[tuple[int, float], str, float, float | None, int]] = {}
    priority = {EXACT: 0, PERCEPTUAL: 1, SEMANTIC: 2}
    edges = {EXACT: 0, PERCEPTUAL: 0, SEMANTIC: 0}

    def note(i: int, kind: str, score: float, threshold: float | None, other: int) -> None:
        key = (priority[kind], -score if kind == SEMANTIC else score)
        if i not in best or key < best[i][0]:
            best[i] = (key, kind, score, threshold, other)

    def link(i: np.ndarray, j: np.ndarray, scores: np.ndarray, kind: str, threshold: float | None,
             j_offset: int) -> None:
        edges[kind] += len(i)
        for a, b, s in zip(i.tolist(), j.tolist(), scores.tolist(), strict=True):
            uf.union(a, b + j_offset)
            note(a, kind, s, threshold, b + j_offset)
            if b + j_offset < n:
                note(b + j_offset, kind, s, threshold, a)

    # exact: identical bytes
    first_of: dict[str, int] = {}
    curated_pos = {sid: n + k for k, sid in enumerate(curated.sample_ids)} if curated is not None else {}
    ei, ej = [], []
    for i, sid in enumerate(new.sample_ids):
        target = curated_pos.get(sid, first_of.get(sid))
        if target is not None:
            ei.append(i)
            ej.append(target)
        else:
            first_of[sid] = i
    if ei:
        link(np.array(ei), np.array(ej), np.zeros(len(ei)), EXACT, 0.0, 0)

    # perceptual: pHash with an orientation search (flip/rotation invariant)
    if config.phash_threshold >= 0 and n:
        targets = [(None, 0)] + ([(curated, n)] if m else [])
        for base, offset in targets:
            i, j, d = orientation_pairs(new.orientations, config.phash_threshold,
                                        None if base is None else base.orientations[:, 0], config.rotated_threshold)
            link(i, j, d.astype(float), PERCEPTUAL, float(config.phash_threshold), offset)

    # semantic: cosine of embeddings (SemDeDup); flat when small, IVF clusters when large
    if config.semantic_threshold <= 1.0 and new.embeddings.size:
        i, j, s = cosine_pairs(new.embeddings, config.semantic_threshold, exact_max=config.exact_search_max,
                               nprobe=config.ivf_nprobe)
        link(i, j, s.astype(float), SEMANTIC, config.semantic_threshold, 0)
        if curated is not None and m:
            i, j, s = cosine_pairs(new.embeddings, config.semantic_threshold, curated.embeddings,
                                   exact_max=config.exact_search_max, nprobe=config.ivf_nprobe,
                                   index=curated_index)
            link(i, j, s.astype(float), SEMANTIC, config.semantic_threshold, n)

    # components -> representatives
    roots = np.array([uf.find(x) for x in range(n + m)], dtype=np.int64)
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[_rank(new)] = np.arange(n)
    rep_for_root: dict[int, int] = {}
    for x in range(n + m):
        r = int(roots[x])
        cur = rep_for_root.get(r)
        if x >= n:  # a curated representative always wins; among several, the first stays the target
            if cur is None or cur < n:
                rep_for_root[r] = x
        elif cur is None or (cur < n and rank_of[x] > rank_of[cur]):
            rep_for_root[r] = x
    keep = np.ones(n, dtype=bool)
    decisions: list[Decision] = []
    dup_components = set()
    for x in range(n):
        rep = rep_for_root[int(roots[x])]
        if rep == x:
            continue
        keep[x] = False
        dup_components.add(int(roots[x]))
        _, kind, score, threshold, linked = best[x]
        rep_id = new.sample_ids[rep] if rep < n else curated.sample_ids[rep - n]
        linked_id = new.sample_ids[linked] if linked < n else curated.sample_ids[linked - n]
        details = {"representative_uri": new.source_uris[rep] if rep < n else curated.source_uris[rep - n],
                   "representative_curated_before": rep >= n}
        if linked != rep:
            details["linked_via"] = linked_id
        decisions.append(Decision(new.sample_ids[x], new.source_uris[x], "dedup", "drop", kind,
                                  score=float(score), threshold=threshold, duplicate_of=rep_id, details=details))
    return DedupResult(keep=keep, decisions=decisions, components=len(dup_components), edges=edges)
