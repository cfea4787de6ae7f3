"""`deduplicated_images`: rows that are not a verified near-copy of a kept row, across every drop and against
everything curated before (incremental: each run that finds new feature partitions appends one increment)."""

import bisect
import hashlib
import json
import posixpath
from dataclasses import asdict, replace

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from assets.exclusion_signals import ASSET as EXCLUSION
from assets.exclusion_signals import exclusion_signals
from assets.image_features import ASSET as FEATURES
from assets.image_features import image_features
from curation.decisions import decisions_table
from curation.dedup import (
    DEDUP_CODE_VERSION,
    Candidates,
    DedupConfig,
    build_semantic_index,
    deduplicate,
    orientation_pairs,
)
from curation.dedup_verify import Picture, same_picture
from curation.features import embedding_matrix, orientation_matrix
from orchestration.ray_adapter import Throughput
from orchestration.reads import part_rows, read_rows
from orchestration.resources import StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "deduplicated_images"
STATE = "_STATE.json"
INDEX = "semantic.faiss"
INDEX_IDS = "semantic_ids.parquet"
_RANK_COLUMNS = ["sample_id", "source_uri", "phash_orientations", "width", "height", "byte_size"]


class DeduplicatedImagesConfig(dg.Config):
    """Duplicate thresholds (defaults measured in bench/dedup_eval.py)."""

    phash_threshold: int = Field(default=DedupConfig.phash_threshold,
                                 description="Max upright pHash Hamming distance (-1 disables).")
    rotated_threshold: int = Field(default=DedupConfig.rotated_threshold,
                                   description="Max distance of a flipped/rotated pHash to an upright one.")
    semantic_threshold: float = Field(default=DedupConfig.semantic_threshold,
                                      description="Min cosine similarity of embeddings (> 1 disables).")
    exact_search_max: int = Field(default=DedupConfig.exact_search_max,
                                  description="Exact semantic search up to this many vectors, IVF above.")
    ivf_nprobe: int = Field(default=DedupConfig.ivf_nprobe, description="IVF clusters probed per query.")
    verify: bool = Field(default=DedupConfig.verify,
                         description="Verify each perceptual/semantic candidate as the same picture (local features + "
                                     "RANSAC, flips, photometric agreement) before removing it.")
    max_verifications: int = Field(default=DedupConfig.max_verifications,
                                   description="Kept candidates verified per row, strongest first.")

    def to_dedup_config(self) -> DedupConfig:
        """The one conversion from Dagster config to the pure config."""
        return DedupConfig(phash_threshold=self.phash_threshold, rotated_threshold=self.rotated_threshold,
                           semantic_threshold=self.semantic_threshold, exact_search_max=self.exact_search_max,
                           ivf_nprobe=self.ivf_nprobe, verify=self.verify, max_verifications=self.max_verifications)


def _config_hash(config: DedupConfig) -> str:
    payload = json.dumps({"config": asdict(config), "code": DEDUP_CODE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


# ingest notes that mean the stored pixels needed converting (the original of a duplicate pair rarely does)
_CONVERSIONS = ("cmyk_", "high_bit_depth", "palette_", "alpha_", "mode_", "animated_", "extension_mismatch")


def _provenance(store: TableStore, partitions: list[str], uris: list[str]) -> np.ndarray:
    """Per row: 2 for a named licence, +1 when ingest did not have to convert the pixels."""
    columns = ["source_uri", "licence", "notes"]
    info = pa.concat_tables([store.read_table(store.dir("source_images", p), columns=columns)
                             for p in partitions]).to_pylist()
    by_uri = {r["source_uri"]: r for r in info}
    score = []
    for uri in uris:
        row = by_uri.get(uri) or {}
        converted = any(note.startswith(_CONVERSIONS) for note in row.get("notes") or [])
        score.append(2 * bool(row.get("licence")) + (not converted))
    return np.asarray(score, dtype=np.int64)


class _CuratedThumbnails:
    """Reads the verification thumbnails of curated rows (row k of the kept parts read in order) by row group, so an
    increment reads the thumbnails its candidates point at, not every curated image."""

    def __init__(self, store: TableStore, directory: str, expected_rows: int) -> None:
        self.store = store
        self.parts = store.list_parts(directory)
        self.starts, total = [], 0
        for path in self.parts:
            self.starts.append(total)
            total += part_rows(store, path)
        if total != expected_rows:
            raise RuntimeError(f"{directory}: parts hold {total} rows, the curated table {expected_rows}")

    def __call__(self, rows: np.ndarray) -> list[bytes]:
        wanted: dict[int, list[tuple[int, int]]] = {}
        for k, r in enumerate(rows.tolist()):
            part = bisect.bisect_right(self.starts, r) - 1
            wanted.setdefault(part, []).append((k, r - self.starts[part]))
        out: list[bytes] = [b""] * len(rows)
        for part, items in wanted.items():
            table = read_rows(self.store, self.parts[part], [local for _, local in items], ["verify_thumbnail"])
            for (k, _), data in zip(items, table.column("verify_thumbnail").to_pylist(), strict=True):
                out[k] = data
        return out


def _candidates(table: pa.Table, embeddings: np.ndarray) -> Candidates:
    return Candidates(
        sample_ids=table.column("sample_id").to_pylist(),
        source_uris=table.column("source_uri").to_pylist(),
        orientations=orientation_matrix(table),
        embeddings=embeddings,
        pixels=(pc.multiply(table.column("width").cast(pa.int64()), table.column("height").cast(pa.int64()))
                .to_numpy()),
        byte_size=table.column("byte_size").to_numpy(),
        thumbnails=table.column("verify_thumbnail").to_pylist() if "verify_thumbnail" in table.column_names else None,
    )


def _finished_feature_partitions(store: TableStore) -> dict[str, str]:
    """Drops whose features and exclusion signals are both complete -> a fingerprint of both markers."""
    out = {}
    for partition in store.list_partitions(FEATURES):
        markers = [store.read_json(f"{store.dir(asset, partition)}/{SUCCESS_MARKER}") for asset in (FEATURES,
                                                                                                    EXCLUSION)]
        if all(markers):
            # what the data is, not which run wrote it: a rerun that reused every part changes nothing here
            content = [{k: v for k, v in m.items() if k != "run_id"} for m in markers]
            out[partition] = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]
    return out


def _survivors(store: TableStore, partition: str) -> pa.Table:
    """Feature rows of a drop that no exclusion filter removed (the cheap filters run before dedup)."""
    features = store.read_table(store.dir(FEATURES, partition))
    signals = store.read_table(store.dir(EXCLUSION, partition), columns=["source_uri", "excluded"])
    excluded = signals.filter(signals.column("excluded")).column("source_uri")
    return features.filter(pc.invert(pc.is_in(features.column("source_uri"), value_set=excluded)))


def _load_index(store: TableStore, directory: str, curated: pa.Table, exact_max: int):
    """The persisted semantic index if it matches the curated rows, else rebuilt from their stored embeddings."""
    import faiss

    if curated.num_rows == 0:
        return None, "empty"
    blob = store.read_bytes(posixpath.join(directory, INDEX))
    ids_path = posixpath.join(directory, INDEX_IDS)
    ids = store.read_part(ids_path, ["sample_id"]).column("sample_id") if store.exists(ids_path) else None
    if blob is not None and ids is not None and ids.equals(curated.column("sample_id")):  # id map matches the parts
        return faiss.deserialize_index(np.frombuffer(blob, dtype=np.uint8)), "loaded"
    vectors = embedding_matrix(store.read_table(directory, columns=["embedding"]))
    return build_semantic_index(vectors, exact_max), "rebuilt"


def verify(store: TableStore, config: DedupConfig, increment: int | None, new_rows: int) -> list[dg.AssetCheckResult]:
    """The three checks: accounting of the last increment, unique sha256, no kept pair within the threshold."""
    directory = store.dir(ASSET)
    kept = store.read_table(directory, columns=["sample_id", "phash_orientations"])
    results = []
    if increment is None:
        accounting = {"passed": True, "metadata": {"new_rows": 0}}
    else:
        kept_now = store.read_part(store.part_path(ASSET, None, increment), ["sample_id"]).num_rows
        ledger = store.read_part(store.part_path("decisions/" + ASSET, None, increment), ["decision", "reason"])
        drops = ledger.filter(pc.equal(ledger.column("decision"), "drop"))
        dropped = drops.num_rows
        accounting = {"passed": new_rows == kept_now + dropped and all(drops.column("reason").to_pylist()),
                      "metadata": {"new_rows": new_rows, "kept": kept_now, "dropped": dropped}}
    results.append(dg.AssetCheckResult(check_name="accounting", **accounting))
    ids = kept.column("sample_id").to_pylist()
    results.append(dg.AssetCheckResult(check_name="unique_sha256", passed=len(ids) == len(set(ids)),
                                       metadata={"kept": len(ids), "distinct": len(set(ids))}))
    pairs, same = 0, 0
    if config.phash_threshold >= 0 and kept.num_rows:
        i, j, _ = orientation_pairs(orientation_matrix(kept), config.phash_threshold,
                                    rotated_threshold=config.rotated_threshold)
        pairs = len(i)
        if pairs and config.verify:
            # a kept pair within the threshold is legitimate only when verification says two different pictures
            read = _CuratedThumbnails(store, directory, kept.num_rows)
            nodes = np.unique(np.concatenate([i, j]))
            pictures = dict(zip(nodes.tolist(), (Picture(t) for t in read(nodes)), strict=True))
            same = sum(same_picture(pictures[a], pictures[b], config.verification).same
                       for a, b in zip(i.tolist(), j.tolist(), strict=True))
        else:
            same = pairs
    results.append(dg.AssetCheckResult(check_name="no_perceptual_pairs_kept", passed=same == 0,
                                       metadata={"pairs_within_threshold": pairs, "verified_same_picture": same}))
    return results


@dg.asset(
    deps=[image_features, exclusion_signals],
    code_version=DEDUP_CODE_VERSION,
    kinds={"faiss", "parquet"},
    group_name="dedup",
    check_specs=[
        dg.AssetCheckSpec("accounting", asset=ASSET, description="new rows = kept + dropped, each drop with a reason"),
        dg.AssetCheckSpec("unique_sha256", asset=ASSET, description="no two kept rows share a sha256"),
        dg.AssetCheckSpec("no_perceptual_pairs_kept", asset=ASSET,
                          description="no two kept rows within the perceptual threshold that verification calls "
                                      "the same picture"),
    ],
)
def deduplicated_images(context: dg.AssetExecutionContext, config: DeduplicatedImagesConfig,
                        storage: StorageResource) -> dg.MaterializeResult:
    """Exact, perceptual and semantic near-copies of kept rows among the filter survivors, across drops and against
    the past; each non-exact candidate verified as the same picture before removal."""
    store = storage.store()
    with store.lock(ASSET, owner=context.run.run_id):  # increments of two concurrent runs must not interleave
        return _deduplicate(context, config, store)


def _deduplicate(context: dg.AssetExecutionContext, config: DeduplicatedImagesConfig,
                 store: TableStore) -> dg.MaterializeResult:
    dedup_config = config.to_dedup_config()
    chash = _config_hash(dedup_config)
    directory = store.dir(ASSET)
    state_path = posixpath.join(directory, STATE)
    state = store.read_json(state_path) or {}
    finished = _finished_feature_partitions(store)
    changed = [p for p, fp in state.get("partitions", {}).items() if finished.get(p) != fp]
    if state and (state.get("config_hash") != chash or changed):
        why = "thresholds or code changed" if state.get("config_hash") != chash else f"features changed: {changed}"
        context.log.info(f"recomputing from scratch: {why}")
        store.delete_dir(directory)
        store.delete_dir(store.decisions_dir(ASSET))
        state = {}
    increments = int(state.get("increments", 0))
    store.remove_parts_from(directory, increments)  # leftovers of a run that died before its commit
    store.remove_parts_from(store.decisions_dir(ASSET), increments)
    processed = state.get("partitions", {})
    # earliest-registered drops first: on ties the earlier copy of an image becomes the representative
    order = {p: k for k, p in enumerate(store.registration_order())}
    new_partitions = sorted((p for p in finished if p not in processed), key=lambda p: (order.get(p, len(order)), p))

    clock = Throughput()
    increment = None
    new_rows = 0
    summary_meta: dict = {}
    if new_partitions:
        increment = increments
        new = pa.concat_tables([_survivors(store, p) for p in new_partitions])
        new_rows = new.num_rows
        curated = store.read_table(directory, columns=_RANK_COLUMNS)
        curated_ids = curated.column("sample_id").to_pylist() if curated.num_rows else []
        index, how = _load_index(store, directory, curated, dedup_config.exact_search_max)
        curated_cands = _candidates(curated, np.empty((0, 0), np.float32)) if curated.num_rows else None
        if curated_cands is not None:
            curated_cands = replace(curated_cands, thumbnails=_CuratedThumbnails(store, directory, curated.num_rows))
        candidates = _candidates(new, embedding_matrix(new))
        candidates.provenance = _provenance(store, new_partitions, candidates.source_uris)
        result = deduplicate(candidates, dedup_config, curated_cands, index)
        kept = new.filter(pa.array(result.keep))
        kept = kept.append_column("increment", pa.array([increment] * kept.num_rows, pa.int32()))
        drops = {}
        for d in result.decisions:
            drops[d.reason] = drops.get(d.reason, 0) + 1
        counts = {"total": new_rows, "kept": kept.num_rows, "dropped": len(result.decisions),
                  **{f"dropped_{k}": v for k, v in sorted(drops.items())}}
        part_summary = {"increment": increment, "partitions": new_partitions, "config_hash": chash,
                        "run_id": context.run.run_id, "counts": counts, "edges": result.edges}
        store.write_parquet(store.part_path("decisions/" + ASSET, None, increment),
                            decisions_table(result.decisions, context.run.run_id, DEDUP_CODE_VERSION), part_summary)
        store.write_parquet(store.part_path(ASSET, None, increment), kept, part_summary)
        # the persisted index grows with the kept rows; rebuilt from stored embeddings when its kind must change
        import faiss

        vectors = embedding_matrix(kept) if kept.num_rows else None
        total = curated.num_rows + kept.num_rows
        if index is None or (total > dedup_config.exact_search_max >= curated.num_rows):
            all_vectors = embedding_matrix(store.read_table(directory, columns=["embedding"]))
            index = build_semantic_index(all_vectors, dedup_config.exact_search_max)
        elif vectors is not None:
            index.add(vectors)
        store.write_bytes(posixpath.join(directory, INDEX), faiss.serialize_index(index).tobytes())
        # the id map: faiss id k is row k of the parts read in order
        store.write_parquet(posixpath.join(directory, INDEX_IDS),
                            pa.table({"sample_id": pa.array(curated_ids + kept.column("sample_id").to_pylist(),
                                                            pa.string())}))
        processed.update({p: finished[p] for p in new_partitions})
        store.write_json(state_path, {"config_hash": chash, "code_version": DEDUP_CODE_VERSION,
                                      "increments": increment + 1, "partitions": processed})
        summary_meta = {**counts, "increment": increment, "new_partitions": ", ".join(new_partitions),
                        "index": how, "representatives_with_duplicates": result.components,
                        **{f"edges_{k}": v for k, v in result.edges.items()}}
        context.log.info(f"increment {increment}: {new_rows} new rows, {kept.num_rows} kept, "
                         f"{len(result.decisions)} duplicates")
    else:
        context.log.info("no new feature partitions: nothing to deduplicate")
        summary_meta = {"total": 0, "kept": 0, "dropped": 0}
    checks = verify(store, dedup_config, increment, new_rows)
    curated_rows = store.read_table(directory, columns=["sample_id"]).num_rows
    metadata = {**summary_meta, "curated_total": curated_rows, "dagster/row_count": curated_rows,
                "seconds": round(clock.elapsed(), 3), "path": dg.MetadataValue.path(store.uri(directory)),
                "phash_threshold": dedup_config.phash_threshold,
                "semantic_threshold": dedup_config.semantic_threshold}
    return dg.MaterializeResult(metadata=metadata, check_results=checks)
