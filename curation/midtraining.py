"""Midtraining candidates: semantic coverage + retrieval from exemplar queries + a human review loop.

Three sources of candidates, each a ranked list with a quota:

- `coverage`: per embedding cluster, `per_cluster` samples; `nearest` takes those most similar to the cluster's
  centroid, `spread` (default) takes the most central one and then farthest-point picks (max-min cosine distance)
  so the picks span the cluster instead of repeating its mode.
- `text_query:<q>`: the `per_query` captions most similar to the query under the text encoder (MiniLM by default).
- `image_exemplar:<i>`: the `per_query` images most similar to exemplar embedding i (faiss inner product).

Review: `verdicts` maps sample_id -> the latest `Verdict`. A rejected sample is excluded everywhere and its slot goes
to the next best of the same list; an accepted sample is always in the output (with its own reasons if a list picked
it, else with reason `accepted`). Verdicts are kept as an append-only log (`verdicts_table`, `append_verdicts`);
the latest verdict per sample wins (`latest_verdicts`).
"""

from __future__ import annotations

import csv
import datetime
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

logger = logging.getLogger(__name__)

COVERAGE, ACCEPTED = "coverage", "accepted"
VERDICT_KINDS = ("accept", "reject")
VERDICTS_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("verdict", pa.string(), nullable=False),
    pa.field("reviewer", pa.string(), nullable=False),
    pa.field("time", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("note", pa.string()),
])
CANDIDATES_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("reasons", pa.list_(pa.string()), nullable=False),
    pa.field("score", pa.float64()),
    pa.field("rank", pa.int64()),
    pa.field("cluster", pa.int64()),
    pa.field("caption", pa.string()),
    pa.field("verdict", pa.string()),
    pa.field("reviewer", pa.string()),
])


class TextEncoder(Protocol):
    """Anything that embeds texts into L2-normalised float32 rows (e.g. `curation.text_embedding.MiniLMEncoder`)."""

    def encode(self, texts: list[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class MidtrainingConfig:
    """Quotas and thresholds of the candidate selection."""

    per_cluster: int = 4
    """Coverage picks per cluster."""
    coverage: str = "spread"
    """'spread': most central sample, then farthest-point picks inside the cluster; 'nearest': closest to centroid."""
    cluster_level: int = 0
    """Which column of a (n, levels) label matrix defines the clusters (0 = the leaf level of `rebalance`)."""
    per_query: int = 50
    """Retrieved samples per text query and per image exemplar."""
    min_text_similarity: float = 0.2
    """Smallest caption-to-query cosine (MiniLM) a text-query candidate needs."""
    min_image_similarity: float = 0.0
    """Smallest image-to-exemplar cosine an image-exemplar candidate needs."""


@dataclass(frozen=True)
class Verdict:
    """One reviewer's verdict on one sample; in a log, the latest per sample wins."""

    sample_id: str
    verdict: str
    reviewer: str
    time: datetime.datetime
    note: str | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICT_KINDS:
            raise ValueError(f"verdict must be one of {VERDICT_KINDS}, got {self.verdict!r}")
        if not self.sample_id or not self.reviewer:
            raise ValueError("a verdict needs a sample_id and a reviewer")
        if self.time.tzinfo is None:
            object.__setattr__(self, "time", self.time.replace(tzinfo=datetime.UTC))


def read_verdicts_csv(path: str | Path, time: datetime.datetime | None = None) -> list[Verdict]:
    """Read a reviewer's CSV: columns sample_id, verdict ('accept' | 'reject'), reviewer, optional note and time.

    Args:
        path: the CSV file (UTF-8, header row).
        time: the time of rows without a `time` column/value (None: now, UTC), so a freshly imported file is the
            latest word on its samples.

    Returns:
        Verdicts in file order.

    Raises:
        ValueError: a missing column, or a row with an unknown verdict or an empty sample_id/reviewer (the message
            names the line).
    """
    stamp = time or datetime.datetime.now(datetime.UTC)
    verdicts = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = {"sample_id", "verdict", "reviewer"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                when = row.get("time") or None
                verdicts.append(Verdict(
                    sample_id=(row["sample_id"] or "").strip(), verdict=(row["verdict"] or "").strip().lower(),
                    reviewer=(row["reviewer"] or "").strip(),
                    time=datetime.datetime.fromisoformat(when.strip()) if when else stamp,
                    note=(row.get("note") or "").strip() or None))
            except ValueError as exc:
                raise ValueError(f"{path}, line {line}: {exc}") from exc
    return verdicts


def verdicts_table(verdicts: Iterable[Verdict]) -> pa.Table:
    """Verdicts as an Arrow table (`VERDICTS_SCHEMA`), e.g. a part of the Parquet verdict log."""
    verdicts = list(verdicts)
    return pa.table({
        "sample_id": [v.sample_id for v in verdicts], "verdict": [v.verdict for v in verdicts],
        "reviewer": [v.reviewer for v in verdicts], "time": [v.time for v in verdicts],
        "note": [v.note for v in verdicts]}, schema=VERDICTS_SCHEMA)


def verdicts_from_table(table: pa.Table) -> list[Verdict]:
    """Inverse of `verdicts_table` (row order kept)."""
    rows = table.select(VERDICTS_SCHEMA.names).to_pylist()
    return [Verdict(**row) for row in rows]


def append_verdicts(log: pa.Table | None, new: Iterable[Verdict]) -> pa.Table:
    """The log with `new` appended (append-only: nothing is overwritten; `latest_verdicts` resolves)."""
    added = verdicts_table(new)
    return added if log is None else pa.concat_tables([log.select(VERDICTS_SCHEMA.names).cast(VERDICTS_SCHEMA),
                                                       added])


def latest_verdicts(verdicts: Iterable[Verdict] | pa.Table) -> dict[str, Verdict]:
    """The latest verdict per sample: greatest `time`; between equal times the later one in the log."""
    items = verdicts_from_table(verdicts) if isinstance(verdicts, pa.Table) else list(verdicts)
    latest: dict[str, Verdict] = {}
    for v in items:
        old = latest.get(v.sample_id)
        if old is None or v.time >= old.time:
            latest[v.sample_id] = v
    return latest


def _as_verdict(sample_id: str, value: Verdict | Mapping[str, Any]) -> Verdict:
    if isinstance(value, Verdict):
        return value
    return Verdict(sample_id=sample_id, verdict=value["verdict"], reviewer=value.get("reviewer", "unknown"),
                   time=value.get("time") or datetime.datetime.now(datetime.UTC), note=value.get("note"))


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def coverage_ranking(embeddings: np.ndarray, members: np.ndarray, k: int, mode: str,
                     excluded: np.ndarray) -> list[tuple[int, float]]:
    """Up to `k` picks from one cluster, skipping excluded rows: (row, cosine to the centroid), in pick order.

    Args:
        embeddings: (n, d) unit rows.
        members: row indices of the cluster.
        k: picks wanted.
        mode: 'nearest' or 'spread' (see `MidtrainingConfig.coverage`).
        excluded: (n,) bool, rows that may not be picked (rejected by a reviewer).

    Returns:
        The picks, best first.
    """
    x = embeddings[members]
    centroid = x.mean(0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    sim = x @ centroid
    allowed = ~excluded[members]
    if not allowed.any() or k <= 0:
        return []
    if mode == "nearest":
        order = [i for i in np.argsort(-sim, kind="stable") if allowed[i]][:k]
        return [(int(members[i]), float(sim[i])) for i in order]
    first = int(np.flatnonzero(allowed)[np.argmax(sim[allowed])])
    picks = [first]
    closest = x @ x[first]  # highest similarity to any pick so far
    closest[~allowed] = np.inf
    closest[first] = np.inf
    while len(picks) < min(k, int(allowed.sum())):
        nxt = int(np.argmin(closest))
        picks.append(nxt)
        np.maximum(closest, x @ x[nxt], out=closest)
        closest[nxt] = np.inf
    return [(int(members[i]), float(sim[i])) for i in picks]


def _search(database: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top-k (faiss)."""
    import faiss

    index = faiss.IndexFlatIP(database.shape[1])
    index.add(_unit(database))
    return index.search(_unit(queries), k)


def select_candidates(sample_ids: Sequence[str], embeddings: np.ndarray, captions: Sequence[str | None],
                      cluster_labels: np.ndarray, config: MidtrainingConfig, text_queries: Sequence[str] = (),
                      image_exemplars: np.ndarray | None = None, text_encoder: TextEncoder | None = None,
                      verdicts: Mapping[str, Verdict | Mapping[str, Any]] | None = None,
                      caption_embeddings: np.ndarray | None = None) -> pa.Table:
    """Pick midtraining candidates by coverage and retrieval, applying the reviewers' verdicts.

    Args:
        sample_ids: one id per row.
        embeddings: (n, d) image embeddings (normalised here).
        captions: one caption (or None) per row; searched by the text queries.
        cluster_labels: (n,) cluster per row, or (n, levels) with `config.cluster_level` chosen.
        config: quotas and thresholds.
        text_queries: free-text exemplar queries ("a hand-drawn map", ...).
        image_exemplars: (m, d) embeddings of exemplar images, in the image embedding space.
        text_encoder: encodes captions and queries (None: `MiniLMEncoder`, loaded only if there are text queries).
        verdicts: sample_id -> latest `Verdict` (or a mapping with `verdict`, `reviewer`, `time`).
        caption_embeddings: precomputed (n, d_text) caption embeddings (skips encoding the captions).

    Returns:
        One row per candidate (`CANDIDATES_SCHEMA`): `reason` is the first list that picked it (coverage, then the
        queries, then the exemplars, in order) or `accepted`; `reasons` all of them; `score` the cosine of that
        first reason (to the cluster centroid, query or exemplar); `rank` its rank in that list.
    """
    ids = [str(s) for s in sample_ids]
    n = len(ids)
    x = _unit(np.asarray(embeddings)) if n else np.empty((0, 0), np.float32)
    labels = np.asarray(cluster_labels)
    labels = labels[:, config.cluster_level] if labels.ndim == 2 else labels
    if len(labels) != n or len(captions) != n:
        raise ValueError("cluster_labels and captions need one entry per sample")
    latest = {sid: _as_verdict(sid, v) for sid, v in (verdicts or {}).items()}
    row_of = {sid: i for i, sid in enumerate(ids)}
    rejected = np.zeros(n, dtype=bool)
    for sid, v in latest.items():
        if v.verdict == "reject" and sid in row_of:
            rejected[row_of[sid]] = True
    n_rejected = int(rejected.sum())

    picks: dict[int, dict[str, Any]] = {}  # row -> first reason, score, rank, all reasons

    def take(row: int, reason: str, score: float | None, rank: int | None) -> None:
        entry = picks.setdefault(row, {"reason": reason, "score": score, "rank": rank, "reasons": []})
        entry["reasons"].append(reason)

    # coverage
    for cluster in np.unique(labels).tolist() if n else []:
        members = np.flatnonzero(labels == cluster)
        ranking = coverage_ranking(x, members, config.per_cluster, config.coverage, rejected)
        for rank, (row, score) in enumerate(ranking):
            take(row, COVERAGE, score, rank)

    def retrieve(database: np.ndarray, queries: np.ndarray, names: list[str], floor: float) -> None:
        k = min(n, config.per_query + n_rejected)
        if k == 0 or len(queries) == 0:
            return
        sims, rows = _search(database, queries, k)
        for q, name in enumerate(names):
            rank = 0
            for s, row in zip(sims[q].tolist(), rows[q].tolist(), strict=True):
                if rank >= config.per_query or row < 0 or s < floor:
                    break
                if rejected[row]:
                    continue  # replaced by the next best
                take(row, name, s, rank)
                rank += 1

    if text_queries:
        if caption_embeddings is None:
            if text_encoder is None:
                from curation.text_embedding import MiniLMEncoder

                text_encoder = MiniLMEncoder()
            caption_embeddings = text_encoder.encode([c or "" for c in captions])
        elif text_encoder is None:
            raise ValueError("caption_embeddings given without the text_encoder that made them")
        query_embeddings = text_encoder.encode(list(text_queries))
        retrieve(caption_embeddings, query_embeddings, [f"text_query:{q}" for q in text_queries],
                 config.min_text_similarity)
    if image_exemplars is not None and len(image_exemplars):
        retrieve(x, np.asarray(image_exemplars), [f"image_exemplar:{i}" for i in range(len(image_exemplars))],
                 config.min_image_similarity)

    for sid, v in latest.items():
        if v.verdict == "accept":
            if sid in row_of:
                if row_of[sid] not in picks:
                    take(row_of[sid], ACCEPTED, None, None)
            else:
                logger.warning("accepted sample %s is not in this corpus; skipped", sid)

    rows = sorted(picks)
    columns: dict[str, list[Any]] = {name: [] for name in CANDIDATES_SCHEMA.names}
    for row in rows:
        entry = picks[row]
        v = latest.get(ids[row])
        columns["sample_id"].append(ids[row])
        columns["reason"].append(entry["reason"])
        columns["reasons"].append(entry["reasons"])
        columns["score"].append(entry["score"])
        columns["rank"].append(entry["rank"])
        columns["cluster"].append(int(labels[row]))
        columns["caption"].append(captions[row])
        columns["verdict"].append(v.verdict if v else None)
        columns["reviewer"].append(v.reviewer if v else None)
    logger.info("midtraining: %d candidates (%d rejected excluded)", len(rows), n_rejected)
    return pa.table(columns, schema=CANDIDATES_SCHEMA)
