"""A persisted, incremental faiss index of style descriptors keyed by sample id.

Exact inner-product search (`IndexFlatIP` under an `IndexIDMap2`): descriptors are L2-normalised, so scores are
cosine similarities, and at curated-set sizes (10^5-10^6 x 256 float32 = 0.1-1 GB) a flat index is exact and fast
enough; an IVF index can replace it behind the same interface. Samples are added once (re-adding is a no-op) and
removed when they leave the curated set (opt-outs), so a rerun only touches what changed.
"""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np

INDEX_FORMAT = "atelier-style-index-1"


def faiss_id(sample_id: str) -> int:
    """A stable non-negative int64 id for a hex sample id (its first 60 bits)."""
    return int(sample_id[:15], 16)


class StyleIndex:
    """Sample ids and their descriptors in a faiss index, persisted as bytes."""

    def __init__(self, dim: int, descriptor: str) -> None:
        import faiss

        self.dim = dim
        self.descriptor = descriptor
        self._index = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._ids: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, sample_id: str) -> bool:
        return self._ids.get(faiss_id(sample_id)) == sample_id

    @property
    def sample_ids(self) -> list[str]:
        """Every indexed sample id, sorted."""
        return sorted(self._ids.values())

    def add(self, sample_ids: list[str], vectors: np.ndarray) -> int:
        """Add the samples not yet indexed; returns how many were added.

        Raises:
            ValueError: wrong shape, or two different ids that share their 60-bit prefix (never seen for sha256).
        """
        vectors = np.asarray(vectors, np.float32)
        if vectors.ndim != 2 or vectors.shape != (len(sample_ids), self.dim):
            raise ValueError(f"expected {len(sample_ids)} x {self.dim} vectors, got {vectors.shape}")
        keep, ids = [], []
        for row, sid in enumerate(sample_ids):
            fid = faiss_id(sid)
            known = self._ids.get(fid)
            if known == sid or fid in ids:
                continue
            if known is not None:
                raise ValueError(f"faiss id collision between {known} and {sid}")
            keep.append(row)
            ids.append(fid)
        if keep:
            self._index.add_with_ids(np.ascontiguousarray(vectors[keep]), np.array(ids, np.int64))
            self._ids.update({fid: sample_ids[row] for fid, row in zip(ids, keep, strict=True)})
        return len(keep)

    def remove(self, sample_ids: list[str]) -> int:
        """Remove the given samples (unknown ones are ignored); returns how many were removed."""
        import faiss

        ids = [faiss_id(s) for s in sample_ids if s in self]
        if not ids:
            return 0
        removed = int(self._index.remove_ids(faiss.IDSelectorBatch(np.array(ids, np.int64))))
        for fid in ids:
            self._ids.pop(fid, None)
        return removed

    def retain(self, wanted: set[str]) -> int:
        """Remove every sample not in `wanted`; returns how many were removed."""
        return self.remove([s for s in self._ids.values() if s not in wanted])

    def vectors(self, sample_ids: list[str]) -> np.ndarray:
        """The stored descriptors of indexed samples, in the given order."""
        if not sample_ids:
            return np.empty((0, self.dim), np.float32)
        return np.stack([self._index.reconstruct(faiss_id(s)) for s in sample_ids]).astype(np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The `k` most similar indexed samples of each query: (ids per query, cosine similarities [n, k'])."""
        queries = np.ascontiguousarray(np.asarray(queries, np.float32).reshape(-1, self.dim))
        k = min(k, len(self))
        if k == 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))], np.empty((len(queries), 0), np.float32)
        scores, ids = self._index.search(queries, k)
        return [[self._ids[int(i)] for i in row if i >= 0] for row in ids], scores

    def version(self) -> str:
        """A content hash: the descriptor name and the indexed ids (equal versions answer queries identically)."""
        digest = hashlib.sha256(f"{self.descriptor}\n{self.dim}\n".encode())
        for sid in self.sample_ids:
            digest.update(sid.encode() + b"\n")
        return digest.hexdigest()[:16]

    def to_bytes(self) -> bytes:
        """The index and its id map, for `TableStore.write_bytes`."""
        import faiss

        header = json.dumps({"format": INDEX_FORMAT, "dim": self.dim, "descriptor": self.descriptor,
                             "ids": [self._ids[k] for k in sorted(self._ids)]}).encode()
        body = faiss.serialize_index(self._index).tobytes()
        out = io.BytesIO()
        out.write(len(header).to_bytes(8, "little"))
        out.write(header)
        out.write(body)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> StyleIndex:
        """Load what `to_bytes` wrote.

        Raises:
            ValueError: not an index of this format, or its id map disagrees with the faiss index.
        """
        import faiss

        size = int.from_bytes(blob[:8], "little")
        try:
            header = json.loads(blob[8:8 + size])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError("not a style index") from exc
        if header.get("format") != INDEX_FORMAT:
            raise ValueError(f"style index format {header.get('format')!r}, expected {INDEX_FORMAT!r}")
        index = cls(header["dim"], header["descriptor"])
        index._index = faiss.deserialize_index(np.frombuffer(blob[8 + size:], np.uint8))
        index._ids = {faiss_id(s): s for s in header["ids"]}
        if index._index.ntotal != len(index._ids) or index._index.d != index.dim:
            raise ValueError(f"style index holds {index._index.ntotal} vectors for {len(index._ids)} ids")
        return index
