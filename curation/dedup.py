"""Deduplication: exact (sha256), perceptual (pHash Hamming with an orientation search) and semantic (cosine of
embeddings) candidates, each non-exact candidate verified as the same picture before anything is removed.

The rule is SemDeDup's, not a transitive closure: rows are visited best representative first (resolution,
provenance, bytes, earliest) and a row is removed only as a verified near-copy of a row already KEPT, or of a row
already removed as such (verification says both are the same picture, so the kept row is the representative of
both: a crop of the original is still found when a same-size re-encode outranked the original). A chain of merely
similar pairs A~B~C never removes C for resembling B: on flat illustration and abstract art the embedding puts
unrelated pictures at cosine 0.91-0.94, and the closure had one representative absorb 111 distinct images
(issue 14). Verification (`curation.dedup_verify`: local features + RANSAC, flips included, then photometric
agreement) needs pixels: a small thumbnail per row, stored with the features.

Incremental: `deduplicate` takes the new rows and, optionally, everything curated before (its hashes, a faiss index
over its embeddings and a reader of its thumbnails). Earlier representatives always stay (shards may already be
built from them) and are visited first; new rows verified as copies of one of them are dropped as its duplicates.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from curation.decisions import Decision
from curation.dedup_verify import Picture, VerifyConfig, same_picture
from curation.hamming import hamming_pairs

DEDUP_CODE_VERSION = "dedup-3"
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
    verify: bool = True
    """Verify perceptual and semantic candidates as the same picture before removal. Off, a candidate edge to a kept
    row is proof enough (measured in bench/dedup_art_eval.py as the ablation; not for production on art)."""
    verification: VerifyConfig = field(default_factory=VerifyConfig)
    max_verifications: int = 16
    """Kept candidates verified per row, strongest first: bounds the work on a dense cluster of similar art, where
    a row may have hundreds of semantic candidates and none is the same picture."""


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
    thumbnails: Sequence[bytes] | Callable[[np.ndarray], Sequence[bytes]] | None = None
    """Verification thumbnails (`curation.dedup_verify.encode_thumbnail`), one per row, or a reader that returns
    them for an array of row indices (the curated side reads only the rows a candidate points at)."""

    def __len__(self) -> int:
        return len(self.sample_ids)

    def read_thumbnails(self, rows: np.ndarray) -> Sequence[bytes]:
        if self.thumbnails is None:
            raise ValueError("verification needs thumbnails: Candidates.thumbnails is None")
        if callable(self.thumbnails):
            out = self.thumbnails(rows)
        else:
            out = [self.thumbnails[int(r)] for r in rows]
        if len(out) != len(rows) or any(t is None for t in out):
            raise ValueError(f"thumbnail reader returned {len(out)} thumbnails for {len(rows)} rows, or a null")
        return out


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
    components: int  # kept representatives (new or curated) that absorbed at least one new row
    edges: dict[str, int]  # candidate edges per kind, plus verification outcomes


def _rank(c: Candidates, order_offset: int = 0) -> np.ndarray:
    """Representative preference, higher is better: resolution, then provenance (a licence; no CMYK/16-bit/palette
    conversion needed), then bytes (the original over re-encodes), then earliest (lower index)."""
    n = len(c)
    provenance = c.provenance if c.provenance is not None else np.zeros(n, dtype=np.int64)
    return np.lexsort((-np.arange(n) - order_offset, c.byte_size, provenance, c.pixels))  # ascending: last is best


class _Pictures:
    """Decoded thumbnails of the rows in candidate edges, read in one call per side and decoded on first use (an
    LRU bound keeps memory flat however many rows have candidates)."""

    def __init__(self, new: Candidates, curated: Candidates | None, nodes: np.ndarray, limit: int = 4096) -> None:
        n = len(new)
        self._data: dict[int, bytes] = {}
        for side, rows, offset in ((new, nodes[nodes < n], 0), (curated, nodes[nodes >= n] - n, n)):
            if len(rows):
                self._data.update(zip((rows + offset).tolist(), side.read_thumbnails(rows), strict=True))
        self._cache: OrderedDict[int, Picture] = OrderedDict()
        self._limit = limit

    def __getitem__(self, node: int) -> Picture:
        pic = self._cache.pop(node, None) or Picture(self._data[node])
        self._cache[node] = pic
        if len(self._cache) > self._limit:
            self._cache.popitem(last=False)
        return pic


def deduplicate(new: Candidates, config: DedupConfig, curated: Candidates | None = None,
                curated_index=None) -> DedupResult:
    """Decide which new rows are duplicates of a kept row: of each other or of what was curated before.

    Args:
        new: rows of this increment, in a stable order (earlier rows win ties).
        config: thresholds and the verification.
        curated: representatives kept by earlier increments (may be empty or None).
        curated_index: a faiss index over `curated.embeddings` (built when None).

    Returns:
        `DedupResult`: a keep mask over `new`, one `dedup` drop decision per removed row (with `duplicate_of`, the
        KEPT row it copies, the score of the edge that was verified, the threshold and the verification evidence),
        candidate edge counts per kind and how many candidates verification confirmed or rejected.
    """
    n = len(new)
    m = len(curated) if curated is not None else 0
    edges = {EXACT: 0, PERCEPTUAL: 0, SEMANTIC: 0, "verified": 0, "rejected_by_verification": 0,
             "verification_budget_exhausted": 0, "verified_via_copy": 0}
    keep = np.ones(n, dtype=bool)
    if n == 0:
        return DedupResult(keep=keep, decisions=[], components=0, edges=edges)
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[_rank(new)] = np.arange(n)

    # exact: identical bytes, a group by sample_id (no edges); the best-ranked copy of a group stands for it
    ids = np.asarray(new.sample_ids, dtype=object)
    _, group = np.unique(ids.astype(str), return_inverse=True)
    by_group = np.lexsort((rank_of, group))
    last = np.ones(n, dtype=bool)
    last[:-1] = group[by_group][1:] != group[by_group][:-1]
    head_of_group = np.empty(group.max() + 1, dtype=np.int64)
    head_of_group[group[by_group[last]]] = by_group[last]
    head = head_of_group[group]  # per row: the row that stands for its bytes
    curated_pos = {sid: n + k for k, sid in enumerate(curated.sample_ids)} if m else {}
    # per new row: (kind, score, threshold, target node, verdict details) of its removal
    removed: dict[int, tuple[str, float, float | None, int, dict]] = {}
    for x in np.flatnonzero(head == np.arange(n)).tolist():
        target = curated_pos.get(new.sample_ids[x])
        if target is not None:
            removed[x] = (EXACT, 0.0, 0.0, target, {})
    edges[EXACT] = int((head != np.arange(n)).sum()) + len(removed)
    active = np.flatnonzero((head == np.arange(n)) & ~np.isin(np.arange(n), list(removed)))

    def node_id(y: int) -> tuple[str, str]:
        return (new.sample_ids[y], new.source_uris[y]) if y < n else (curated.sample_ids[y - n],
                                                                        curated.source_uris[y - n])

    # candidates among the active rows and against the curated ones: (u, v, key); a lower key is stronger
    us, vs, keys, kinds, scores = [], [], [], [], []

    def add(i: np.ndarray, j: np.ndarray, s: np.ndarray, kind: str, key: np.ndarray) -> None:
        edges[kind] += len(i)
        us.append(i)
        vs.append(j)
        keys.append(key)
        kinds.append(np.full(len(i), kind, dtype=object))
        scores.append(s.astype(np.float64))

    if config.phash_threshold >= 0 and len(active):
        i, j, d = orientation_pairs(new.orientations[active], config.phash_threshold,
                                    rotated_threshold=config.rotated_threshold)
        add(active[i], active[j], d, PERCEPTUAL, 1 + d / 100)
        if m:
            i, j, d = orientation_pairs(new.orientations[active], config.phash_threshold,
                                        curated.orientations[:, 0], config.rotated_threshold)
            add(active[i], j + n, d, PERCEPTUAL, 1 + d / 100)
    if config.semantic_threshold <= 1.0 and new.embeddings.size and len(active):
        queries = new.embeddings[active]
        i, j, sim = cosine_pairs(queries, config.semantic_threshold, exact_max=config.exact_search_max,
                                 nprobe=config.ivf_nprobe)
        add(active[i], active[j], sim, SEMANTIC, 3 - sim)
        if m:
            i, j, sim = cosine_pairs(queries, config.semantic_threshold, curated.embeddings,
                                     exact_max=config.exact_search_max, nprobe=config.ivf_nprobe,
                                     index=curated_index)
            add(active[i], j + n, sim, SEMANTIC, 3 - sim)

    if us:
        u, v = np.concatenate(us), np.concatenate(vs)
        key, kind, score = np.concatenate(keys), np.concatenate(kinds), np.concatenate(scores)
        # both directions, grouped by the row being decided and strongest first
        src, dst = np.concatenate([u, v]), np.concatenate([v, u])
        key, kind, score = np.tile(key, 2), np.tile(kind, 2), np.tile(score, 2)
        order = np.lexsort((key, src))
        src, dst, key, kind, score = src[order], dst[order], key[order], kind[order], score[order]
        bounds = np.searchsorted(src, np.arange(n + m + 1))
        nodes = np.unique(np.concatenate([u, v]))
        pictures = _Pictures(new, curated, nodes) if config.verify else None
        # best representative first: curated rows are kept already, then new rows by descending rank
        decided = np.zeros(n + m, dtype=bool)
        decided[n:] = True
        kept_node = np.zeros(n + m, dtype=bool)
        kept_node[n:] = True
        new_nodes = nodes[nodes < n]
        for x in new_nodes[np.argsort(-rank_of[new_nodes], kind="stable")].tolist():
            decided[x] = True
            tried: set[int] = set()
            for e in range(bounds[x], bounds[x + 1]):
                y = int(dst[e])
                # a kept row, or (with verification) a row verified as the same picture as a kept one: what is
                # the same picture as it is the same picture as its representative. Unverified candidates never
                # chain (the transitive closure that merged distinct art before dedup-2).
                if not decided[y] or y in tried or not (kept_node[y] or (pictures is not None and y in removed
                                                                          and removed[y][4])):
                    continue
                if len(tried) >= config.max_verifications:
                    edges["verification_budget_exhausted"] += 1
                    kept_node[x] = True
                    break
                tried.add(y)
                details: dict = {}
                if pictures is not None:
                    verdict = same_picture(pictures[y], pictures[x], config.verification)
                    if not verdict.same:
                        edges["rejected_by_verification"] += 1
                        continue
                    edges["verified"] += 1
                    details = {"verification": verdict.details()}
                threshold = float(config.phash_threshold) if kind[e] == PERCEPTUAL else config.semantic_threshold
                target = y
                if not kept_node[y]:  # verified against a verified copy: its representative is ours
                    target = removed[y][3]
                    details["verified_against"] = node_id(y)[1]
                    edges["verified_via_copy"] += 1
                removed[x] = (str(kind[e]), float(score[e]), threshold, target, details)
                break
            else:
                kept_node[x] = True

    decisions: list[Decision] = []
    representatives: set[int] = set()
    for x in range(n):
        h = int(head[x])
        if h != x:  # an exact copy of the row standing for its bytes: follows that row's fate
            if h in removed:
                kind_, score_, threshold, target, details = removed[h]
                details = {**details, "exact_copy_of": new.source_uris[h]}
            else:
                kind_, score_, threshold, target, details = EXACT, 0.0, 0.0, h, {}
        elif x in removed:
            kind_, score_, threshold, target, details = removed[x]
        else:
            continue
        keep[x] = False
        representatives.add(target)
        rep_id, rep_uri = node_id(target)
        decisions.append(Decision(new.sample_ids[x], new.source_uris[x], "dedup", "drop", kind_, score=score_,
                                  threshold=threshold, duplicate_of=rep_id,
                                  details={"representative_uri": rep_uri, "representative_curated_before": target >= n,
                                           **details}))
    return DedupResult(keep=keep, decisions=decisions, components=len(representatives), edges=edges)
