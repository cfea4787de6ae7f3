"""`midtraining_candidates`: a small, broad subset of the curated set for midtraining, chosen for review.

Candidates come from coverage of the embedding clusters `rebalanced_images` found (a few per leaf cluster, spread
inside it), from text queries matched against the captions (MiniLM by default) and from image exemplars matched
against the embeddings (exemplar files are embedded with the model `image_features` used; curated samples can serve
as exemplars by id). Only the samples `rebalanced_images` kept are eligible. The reviewers' verdicts
(`curate review`, an append-only log under `<storage>/midtraining_review/`) are applied at every materialization:
rejected samples never come back, accepted ones always stay.
"""

import hashlib
import json

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
from pydantic import Field

from assets.captions import ASSET as CAPTIONS
from assets.captions import captions
from assets.deduplicated_images import ASSET as DEDUP
from assets.rebalanced_images import ASSET as REBALANCED
from assets.rebalanced_images import rebalanced_images
from curation.features import embedding_matrix
from curation.midtraining import CANDIDATES_SCHEMA, MidtrainingConfig, Verdict, select_candidates
from curation.plots import thumbnail_table_markdown
from orchestration import review
from orchestration.resources import ModelSettings, StorageResource
from orchestration.sample_parts import current_rows, read_source_rows
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = review.CANDIDATES
MIDTRAINING_CODE_VERSION = "midtraining-1"
TOP_ROWS = 12
"""Candidates shown (with thumbnails) in the materialization metadata."""

SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    *[CANDIDATES_SCHEMA.field(name) for name in ("reason", "reasons", "score", "rank", "cluster", "caption")],
    pa.field("status", pa.string(), nullable=False),  # 'pending' | 'accepted' (rejected samples are never here)
    pa.field("reviewer", pa.string()),
    pa.field("reviewed_at", pa.timestamp("us", tz="UTC")),
    pa.field("note", pa.string()),
])


class MidtrainingCandidatesConfig(dg.Config):
    """Quotas, exemplar queries and thresholds of the candidate selection (defaults: see MidtrainingConfig)."""

    per_cluster: int = Field(default=MidtrainingConfig.per_cluster, description="Coverage picks per cluster.")
    coverage: str = Field(default=MidtrainingConfig.coverage,
                          description="'spread' (central sample, then farthest-point picks) or 'nearest'.")
    cluster_level: int = Field(default=MidtrainingConfig.cluster_level,
                               description="Level of rebalanced_images' k-means hierarchy (0 = leaf clusters).")
    text_queries: list[str] = Field(default_factory=list,
                                    description="Free-text queries matched against the captions ('a hand-drawn map').")
    per_query: int = Field(default=MidtrainingConfig.per_query,
                           description="Candidates per text query and per image exemplar.")
    min_text_similarity: float = Field(default=MidtrainingConfig.min_text_similarity,
                                       description="Smallest caption-to-query cosine a text-query candidate needs.")
    image_exemplar_paths: list[str] = Field(
        default_factory=list, description="Exemplar image files (paths or URIs), embedded like image_features does.")
    image_exemplar_ids: list[str] = Field(
        default_factory=list, description="Curated samples (ids or unique prefixes) used as exemplars.")
    min_image_similarity: float = Field(default=MidtrainingConfig.min_image_similarity,
                                        description="Smallest image-to-exemplar cosine an exemplar candidate needs.")
    max_candidates: int | None = Field(
        default=None, description="Cap on the total (best-ranked of every list first; accepted ones always stay).")
    text_model_path: str | None = Field(
        default=None, description="Local sentence-encoder directory for the queries (None: the bundled MiniLM).")
    open_clip_pretrained: str | None = Field(
        default=None, description="Weights for embedding exemplar files when image_features used open_clip.")

    def to_midtraining_config(self) -> MidtrainingConfig:
        """The one conversion from Dagster config to the pure config."""
        return MidtrainingConfig(per_cluster=self.per_cluster, coverage=self.coverage,
                                 cluster_level=self.cluster_level, per_query=self.per_query,
                                 min_text_similarity=self.min_text_similarity,
                                 min_image_similarity=self.min_image_similarity)


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def embed_exemplar_files(paths: list[str], stored_model: str, models: ModelSettings,
                         open_clip_pretrained: str | None) -> np.ndarray:
    """Embeddings of exemplar image files with the model that embedded the corpus (same preprocessing).

    Raises:
        FileNotFoundError: an exemplar file is missing.
        ValueError: the corpus' embedding model cannot be rebuilt here, or an exemplar does not decode.
    """
    import fsspec

    from curation.embedding import EmbeddingConfig
    from curation.features import PASS_THROUGH, FeatureConfig, FeatureExtractor

    if stored_model.startswith("open_nsfw"):
        embedding = EmbeddingConfig(backend="open_nsfw")
    elif stored_model.startswith("open_clip/"):
        embedding = EmbeddingConfig(backend="open_clip", model=stored_model.split("/")[1],
                                    pretrained=models.resolve(open_clip_pretrained),
                                    device=models.device_for("auto", 0.0))
    else:
        raise ValueError(f"the corpus was embedded with {stored_model!r}: exemplar files cannot be embedded alike; "
                         f"use image_exemplar_ids")
    extractor = FeatureExtractor(FeatureConfig(embedding=embedding))
    extractor.setup()
    if extractor.embedder.name != stored_model:
        raise ValueError(f"exemplars would be embedded with {extractor.embedder.name!r} but the corpus with "
                         f"{stored_model!r}: set open_clip_pretrained to the weights image_features used")
    data = []
    for path in paths:
        with fsspec.open(path, "rb") as f:
            data.append(f.read())
    rows = {name: ["-"] * len(data) for name in PASS_THROUGH}
    rows.update(width=pa.array([0] * len(data), pa.int32()), height=pa.array([0] * len(data), pa.int32()),
                byte_size=[len(d) for d in data])
    table = pa.table({**rows, "image": data})
    try:
        return embedding_matrix(extractor.process_batch(table))
    except Exception as exc:  # an undecodable exemplar: the error names the files
        raise ValueError(f"cannot embed the exemplar images {paths}: {exc}") from exc


def cap_candidates(table: pa.Table, limit: int | None) -> pa.Table:
    """At most `limit` rows: accepted ones first, then by rank within their list (every list's best picks before
    any list's second), then by score; the table order is kept."""
    if limit is None or table.num_rows <= limit:
        return table
    status = table.column("status").to_pylist()
    ranks = [r if r is not None else -1 for r in table.column("rank").to_pylist()]
    scores = [s if s is not None else 0.0 for s in table.column("score").to_pylist()]
    order = sorted(range(table.num_rows), key=lambda i: (status[i] != "accepted", ranks[i], -scores[i], i))
    accepted = sum(s == "accepted" for s in status)
    keep = sorted(order[:max(limit, accepted)])
    return table.take(pa.array(keep, pa.int64()))


def _eligible(store: TableStore) -> pa.Table:
    """Kept rows of rebalanced_images with their stored embeddings (row order of rebalanced_images)."""
    if store.read_json(f"{store.dir(REBALANCED)}/{SUCCESS_MARKER}") is None:
        raise RuntimeError("materialize rebalanced_images (and its upstream assets) before midtraining_candidates")
    curated = store.read_table(store.dir(REBALANCED), columns=["sample_id", "source", "source_uri", "cluster_path",
                                                               "kept"])
    kept = curated.filter(curated.column("kept")) if curated.num_rows else curated
    ids = kept.column("sample_id").to_pylist()
    vectors = store.read_table(store.dir(DEDUP), columns=["sample_id", "embedding", "embedding_model"],
                               filter=pads.field("sample_id").isin(ids))
    row_of = {sid: i for i, sid in enumerate(vectors.column("sample_id").to_pylist())}
    missing = [sid for sid in ids if sid not in row_of]
    if missing:
        raise RuntimeError(f"{len(missing)} kept samples of rebalanced_images have no embedding in "
                           f"deduplicated_images (e.g. {missing[0]}): rematerialize rebalanced_images")
    vectors = vectors.take(pa.array([row_of[sid] for sid in ids], pa.int64()))
    return pa.table({**{c: kept.column(c) for c in ("sample_id", "source", "source_uri", "cluster_path")},
                     "embedding": vectors.column("embedding"), "embedding_model": vectors.column("embedding_model")})


def _exemplar_ids(store: TableStore, given: list[str]) -> tuple[list[str], np.ndarray]:
    """Full ids and stored embeddings of curated samples named as exemplars (ids or unique prefixes)."""
    curated = store.read_table(store.dir(DEDUP), columns=["sample_id"]).column("sample_id").to_pylist()
    try:
        ids = review.resolve_ids(given, sorted(curated))
    except review.ReviewError as exc:
        raise ValueError(f"image_exemplar_ids: {exc}") from exc
    table = store.read_table(store.dir(DEDUP), columns=["sample_id", "embedding"],
                             filter=pads.field("sample_id").isin(ids))
    row_of = {sid: i for i, sid in enumerate(table.column("sample_id").to_pylist())}
    return ids, embedding_matrix(table.take(pa.array([row_of[s] for s in ids], pa.int64())))


@dg.asset(
    deps=[rebalanced_images, captions],
    code_version=MIDTRAINING_CODE_VERSION,
    kinds={"faiss", "parquet"},
    group_name="training",
    check_specs=[
        dg.AssetCheckSpec("no_rejected_candidate", asset=ASSET,
                          description="no sample whose latest verdict is 'reject' is a candidate"),
        dg.AssetCheckSpec("accepted_included", asset=ASSET,
                          description="every accepted sample that rebalanced_images kept is a candidate"),
        dg.AssetCheckSpec("only_kept_samples", asset=ASSET,
                          description="every candidate is a kept sample of rebalanced_images"),
    ],
)
def midtraining_candidates(context: dg.AssetExecutionContext, config: MidtrainingCandidatesConfig,
                           storage: StorageResource, models: ModelSettings) -> dg.MaterializeResult:
    """Midtraining candidates by cluster coverage and exemplar retrieval, with the reviewers' verdicts applied."""
    store = storage.store()
    with store.lock(ASSET, owner=context.run.run_id):
        return _select(context, config, models, store)


def _select(context, config: MidtrainingCandidatesConfig, models: ModelSettings,
            store: TableStore) -> dg.MaterializeResult:
    mt_config = config.to_midtraining_config()
    eligible = _eligible(store)
    ids = eligible.column("sample_id").to_pylist()
    labels = (np.asarray(eligible.column("cluster_path").to_pylist(), dtype=np.int64).reshape(len(ids), -1)
              if ids else np.zeros((0, 1), np.int64))
    if ids and not 0 <= config.cluster_level < labels.shape[1]:
        raise ValueError(f"cluster_level {config.cluster_level} out of range: rebalanced_images has "
                         f"{labels.shape[1]} level(s)")
    caption_of = {r["sample_id"]: r["caption"] or None
                  for r in current_rows(store, CAPTIONS, ids, columns=["sample_id", "caption"]).to_pylist()}
    caps = [caption_of.get(sid) for sid in ids]
    log_state = review.log_fingerprint(store)
    verdicts = review.latest(store)

    exemplars, exemplar_names = [], []
    if ids and config.image_exemplar_ids:
        ex_ids, vectors = _exemplar_ids(store, config.image_exemplar_ids)
        exemplars.append(vectors)
        exemplar_names += [f"sample {sid}" for sid in ex_ids]
    if ids and config.image_exemplar_paths:
        stored_model = eligible.column("embedding_model")[0].as_py()
        exemplars.append(embed_exemplar_files(config.image_exemplar_paths, stored_model, models,
                                              config.open_clip_pretrained))
        exemplar_names += list(config.image_exemplar_paths)
    encoder = None
    if ids and config.text_queries:
        from curation.text_embedding import MiniLMEncoder

        encoder = MiniLMEncoder(model_dir=models.resolve(config.text_model_path),
                                device=models.device_for("auto", 0.0))
    selected = select_candidates(ids, embedding_matrix(eligible), caps, labels, mt_config,
                                 text_queries=config.text_queries if ids else (),
                                 image_exemplars=np.concatenate(exemplars) if exemplars else None,
                                 text_encoder=encoder, verdicts=verdicts)
    uri_of = dict(zip(ids, eligible.column("source_uri").to_pylist(), strict=True))
    chosen = selected.column("sample_id").to_pylist()
    chosen_verdicts = [verdicts.get(sid) for sid in chosen]
    table = pa.table({
        "sample_id": selected.column("sample_id"),
        "source_uri": pa.array([uri_of[sid] for sid in chosen], pa.string()),
        **{name: selected.column(name) for name in ("reason", "reasons", "score", "rank", "cluster", "caption")},
        "status": pa.array(["accepted" if v and v.verdict == "accept" else "pending" for v in chosen_verdicts]),
        "reviewer": pa.array([v.reviewer if v else None for v in chosen_verdicts], pa.string()),
        "reviewed_at": pa.array([v.time if v else None for v in chosen_verdicts], pa.timestamp("us", tz="UTC")),
        "note": pa.array([v.note if v else None for v in chosen_verdicts], pa.string()),
    }, schema=SCHEMA)
    table = cap_candidates(table, config.max_candidates)

    directory = store.dir(ASSET)
    run_id = context.run.run_id
    store.write_parquet(store.part_path(ASSET, None, 0), table, {"run_id": run_id, "review_log": log_state})
    store.remove_parts_from(directory, 1)

    metadata = _metadata(store, labels[:, config.cluster_level] if ids else np.zeros(0, np.int64), table, verdicts,
                         set(ids), exemplar_names)
    plain = {k: v for k, v in metadata.items() if not isinstance(v, dg.MetadataValue)}
    rebalanced_marker = store.read_json(f"{store.dir(REBALANCED)}/{SUCCESS_MARKER}") or {}
    store.write_json(f"{directory}/{SUCCESS_MARKER}", {
        "run_id": run_id, "code_version": MIDTRAINING_CODE_VERSION,
        "config_hash": _hash({"config": config.model_dump(), "code": MIDTRAINING_CODE_VERSION}),
        "rebalanced_input_id": rebalanced_marker.get("input_id"), "review_log": log_state, "metadata": plain})
    context.log.info(f"{table.num_rows} midtraining candidates from {len(ids)} kept samples; "
                     f"{plain['rejected_excluded']} rejected by reviewers left out")
    return dg.MaterializeResult(metadata={**metadata, "top_candidates": _top_markdown(store, eligible, table)},
                                check_results=verify(store, verdicts))


def _metadata(store: TableStore, clusters: np.ndarray, table: pa.Table,
              verdicts: dict[str, Verdict], eligible_ids: set[str], exemplar_names: list[str]) -> dict:
    reasons = table.column("reasons").to_pylist()
    firsts = table.column("reason").to_pylist()
    kinds: dict[str, int] = {}
    lists: dict[str, int] = {}
    for first, all_reasons in zip(firsts, reasons, strict=True):
        kind = first.split(":", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
        for r in all_reasons:
            lists[r] = lists.get(r, 0) + 1
    status = table.column("status").to_pylist()
    covered = {c for c, rs in zip(table.column("cluster").to_pylist(), reasons, strict=True) if "coverage" in rs}
    rejected = [sid for sid, v in verdicts.items() if v.verdict == "reject"]
    return {
        "total": len(eligible_ids), "kept": table.num_rows, "dagster/row_count": table.num_rows,
        **{f"reason_{k}": v for k, v in sorted(kinds.items())},
        "picks_per_list": dg.MetadataValue.json(lists),
        "clusters": len(set(clusters.tolist())), "clusters_covered": len(covered),
        "accepted": sum(s == "accepted" for s in status), "pending": sum(s == "pending" for s in status),
        "rejected_excluded": sum(sid in eligible_ids for sid in rejected),
        "verdicts_in_log": len(verdicts),
        "image_exemplars": dg.MetadataValue.json({str(i): name for i, name in enumerate(exemplar_names)}),
        "path": dg.MetadataValue.path(store.uri(store.dir(ASSET))),
    }


def _top_markdown(store: TableStore, eligible: pa.Table, table: pa.Table) -> dg.MetadataValue:
    """The best-ranked candidates with thumbnails (one per list and cluster first)."""
    if table.num_rows == 0:
        return dg.MetadataValue.md("no candidates")
    top = cap_candidates(table, TOP_ROWS).to_pylist()
    top.sort(key=lambda r: (r["rank"] if r["rank"] is not None else -1, -(r["score"] or 0.0)))
    source_of = dict(zip(eligible.column("sample_id").to_pylist(), eligible.column("source").to_pylist(),
                         strict=True))
    images = {sid: row["image"] for sid, row in read_source_rows(
        store, {r["sample_id"]: source_of[r["sample_id"]] for r in top}, ["image"]).items()}
    rows = [{"sample_id": r["sample_id"][:16], "status": r["status"], "reason": r["reason"],
             "score": r["score"] if r["score"] is not None else "-", "cluster": r["cluster"],
             "caption": (r["caption"] or "")[:80]} for r in top]
    thumbs = [[images[r["sample_id"]]] if r["sample_id"] in images else [] for r in top]
    return dg.MetadataValue.md(thumbnail_table_markdown(rows, thumbs))


def verify(store: TableStore, verdicts: dict[str, Verdict]) -> list[dg.AssetCheckResult]:
    """The three checks, on the table as written and the verdicts it was built from."""
    table = store.read_table(store.dir(ASSET), columns=["sample_id"])
    chosen = set(table.column("sample_id").to_pylist()) if table.num_rows else set()
    curated = store.read_table(store.dir(REBALANCED), columns=["sample_id", "kept"])
    kept = {s for s, k in zip(curated.column("sample_id").to_pylist(), curated.column("kept").to_pylist(),
                              strict=True) if k} if curated.num_rows else set()
    rejected = sorted(s for s, v in verdicts.items() if v.verdict == "reject" and s in chosen)
    missing_accepted = sorted(s for s, v in verdicts.items() if v.verdict == "accept" and s in kept
                              and s not in chosen)
    outside = sorted(chosen - kept)
    return [
        dg.AssetCheckResult(check_name="no_rejected_candidate", passed=not rejected,
                            metadata={"rejected_candidates": len(rejected), "examples": json.dumps(rejected[:5])}),
        dg.AssetCheckResult(check_name="accepted_included", passed=not missing_accepted,
                            metadata={"missing": len(missing_accepted),
                                      "examples": json.dumps(missing_accepted[:5])}),
        dg.AssetCheckResult(check_name="only_kept_samples", passed=not outside,
                            metadata={"outside": len(outside), "examples": json.dumps(outside[:5])}),
    ]

