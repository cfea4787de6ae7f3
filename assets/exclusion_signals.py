"""`exclusion_signals`: AI-generated, NSFW and artifact signals and stage eligibility for every source image."""

import hashlib
import json
from dataclasses import asdict

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from dagster_ray import RayResource
from pydantic import Field

from assets.ai_image_probe import ai_image_probe, load_probe
from assets.image_features import ASSET as FEATURES
from assets.image_features import image_features
from assets.source_images import source_drops, source_images
from curation.decisions import StageCounts, decisions_table
from curation.exclusion import EXCLUSION_CODE_VERSION, ExclusionConfig, assess, exclusion_schema
from curation.features import embedding_matrix
from curation.probe import Probe
from curation.quality import QualityConfig
from orchestration.ray_adapter import Throughput, run_units
from orchestration.resources import StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "exclusion_signals"


class ExclusionSignalsConfig(dg.Config):
    """Thresholds of the exclusion filters (defaults measured; see bench/BENCHMARKS.md)."""

    nsfw_threshold: float = Field(default=ExclusionConfig.nsfw_threshold, description="open-NSFW drop threshold.")
    check_c2pa: bool = Field(default=True, description="Read C2PA manifests.")
    check_watermark: bool = Field(default=True, description="Decode the SDXL invisible watermark.")
    drop_artifacts: bool = Field(default=True, description="Drop images with artifacts.")
    check_small_text: bool = Field(default=True, description="Detect text illegible at a stage (OCR detector).")
    max_small_text: float = Field(default=QualityConfig.max_small_text,
                                  description="Share of illegible text above which a stage is too complex.")
    stages: list[int] = Field(default=list(QualityConfig.stages), description="Curriculum stage sizes.")
    max_aspect: float = Field(default=QualityConfig.max_aspect, description="Extreme aspect ratio bound.")
    max_border_fraction: float = Field(default=QualityConfig.max_border_fraction, description="Border bound.")
    max_blockiness: float = Field(default=QualityConfig.max_blockiness, description="JPEG blocking ratio bound.")
    min_blocking_excess: float = Field(default=QualityConfig.min_blocking_excess,
                                       description="JPEG blocking: extra boundary step in grey levels.")
    max_detail_loss: float = Field(default=QualityConfig.max_detail_loss,
                                   description="Detail lost at a stage's size above which it is too complex for it.")

    def to_exclusion_config(self) -> ExclusionConfig:
        """The one conversion from Dagster config to the pure config."""
        return ExclusionConfig(
            nsfw_threshold=self.nsfw_threshold, check_c2pa=self.check_c2pa, check_watermark=self.check_watermark,
            drop_artifacts=self.drop_artifacts, check_small_text=self.check_small_text,
            quality=QualityConfig(stages=tuple(self.stages), max_aspect=self.max_aspect,
                                  max_border_fraction=self.max_border_fraction, max_blockiness=self.max_blockiness,
                                  min_blocking_excess=self.min_blocking_excess, max_small_text=self.max_small_text,
                                  max_detail_loss=self.max_detail_loss))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def exclusion_for_part(task: tuple) -> dict:
    """Ray task body: signals for one source part; writes the ledger part, then the signals part."""
    store, partition, index, source_path, features_path, input_id, config, run_id, probe_json = task
    with store.fs.open_input_file(source_path) as f:
        source = pq.read_table(f, columns=["sample_id", "source_uri", "image", "format", "metadata"])
    features = store.read_part(features_path, ["source_uri", "nsfw_score", "embedding", "embedding_model"])
    uris = features.column("source_uri").to_pylist()
    nsfw = dict(zip(uris, features.column("nsfw_score").to_pylist(), strict=True))
    probe_scores: dict[str, float] = {}
    probe = Probe.from_json(probe_json) if probe_json else None
    if probe is not None and features.num_rows:
        same_model = features.column("embedding_model").to_pylist() == [probe.embedding_model] * features.num_rows
        if same_model:  # a probe fitted on another model's embeddings would score noise
            probe_scores = dict(zip(uris, probe.score(embedding_matrix(features)).tolist(), strict=True))
    rows, decisions = [], []
    counts = StageCounts()
    for rec in source.to_pylist():
        counts.total += 1
        row, decision = assess(rec["sample_id"], rec["source_uri"], rec["image"], rec["format"],
                               json.loads(rec["metadata"]), nsfw.get(rec["source_uri"]),
                               probe_scores.get(rec["source_uri"]), config)
        rows.append(row)
        if decision is not None:
            decisions.append(decision)
        if decision is None or decision.decision == "keep":  # a keep decision: a detector error on a kept image
            counts.kept += 1
            if decision is not None:
                counts.notes[decision.reason] += 1
        else:
            counts.dropped[decision.reason] += 1
        for signal in row["ai_signals"]:
            counts.notes[f"ai_signal_{signal.split(':', 1)[0]}"] += 1
    schema = exclusion_schema(config.quality.stages)
    table = pa.Table.from_pylist(rows, schema=schema)
    summary = {"unit": index, "input_id": input_id, "run_id": run_id, "counts": counts.to_dict()}
    store.write_parquet(store.part_path("decisions/" + ASSET, partition, index),
                        decisions_table(decisions, run_id, EXCLUSION_CODE_VERSION), summary)
    store.write_parquet(store.part_path(ASSET, partition, index), table, summary)
    return summary


@dg.asset(
    partitions_def=source_drops,
    deps=[source_images, image_features, ai_image_probe],
    code_version=EXCLUSION_CODE_VERSION,
    kinds={"ray", "parquet"},
    group_name="filters",
    check_specs=[dg.AssetCheckSpec("accounting", asset=ASSET,
                                   description="every source image assessed; excluded = dropped in the ledger")],
)
def exclusion_signals(context: dg.AssetExecutionContext, config: ExclusionSignalsConfig, storage: StorageResource,
                      ray_cluster: RayResource) -> dg.MaterializeResult:
    """AI-generated (metadata, C2PA, SDXL watermark, stealth payload), NSFW and artifact signals; stage eligibility."""
    partition = context.partition_key
    store: TableStore = storage.store()
    exclusion_config = config.to_exclusion_config()
    chash = _hash({"config": asdict(exclusion_config), "code": EXCLUSION_CODE_VERSION})
    sources = store.list_parts(store.dir("source_images", partition))
    features = store.list_parts(store.dir(FEATURES, partition))
    if not sources or len(features) != len(sources):
        raise RuntimeError(f"{partition!r}: materialize source_images and image_features first "
                           f"({len(sources)} source part(s), {len(features)} feature part(s))")
    for directory in (store.dir(ASSET, partition), store.decisions_dir(ASSET, partition)):
        store.remove_parts_from(directory, len(sources))
    probe = load_probe(store)
    probe_json = probe.to_json() if probe else None
    if probe is None:
        context.log.warning("no ai_image_probe trained: the learned-probe signal is off for this run")
    todo, reused = [], 0
    for index, (src, feat) in enumerate(zip(sources, features, strict=True)):
        input_id = _hash([store.part_summary(src), store.part_summary(feat), chash, probe.version if probe else None])
        done = store.part_summary(store.part_path(ASSET, partition, index))
        if done and done.get("input_id") == input_id and store.exists(
                store.part_path("decisions/" + ASSET, partition, index)):
            reused += 1
            continue
        todo.append((store, partition, index, src, feat, input_id, exclusion_config, context.run.run_id,
                     probe_json))
    clock = Throughput()
    computed = sum(s["counts"]["total"] for s in run_units(exclusion_for_part, todo, num_cpus=1.0))
    rate = clock.per_second(computed)

    counts = StageCounts()
    for index in range(len(sources)):
        counts.add(StageCounts.from_dict(store.part_summary(store.part_path(ASSET, partition, index))["counts"]))
    table = store.read_table(store.dir(ASSET, partition), columns=["excluded", *[f"eligible_{s}" for s in
                                                                                exclusion_config.quality.stages]])
    ledger = store.read_table(store.decisions_dir(ASSET, partition), columns=["decision", "reason"])
    source_rows = store.read_table(store.dir("source_images", partition), columns=["sample_id"]).num_rows
    excluded = int(pc.sum(table.column("excluded")).as_py() or 0) if table.num_rows else 0
    drops = int(pc.sum(pc.equal(ledger.column("decision"), "drop")).as_py() or 0) if ledger.num_rows else 0
    passed = table.num_rows == source_rows and excluded == drops and counts.balanced()
    store.write_json(f"{store.dir(ASSET, partition)}/{SUCCESS_MARKER}",
                     {"config_hash": chash, "code_version": EXCLUSION_CODE_VERSION, "run_id": context.run.run_id,
                      "parts": len(sources), "counts": counts.to_dict(),
                      "probe_version": probe.version if probe else None,
                      "input_ids": [store.part_summary(store.part_path(ASSET, partition, i))["input_id"]
                                    for i in range(len(sources))]})
    eligible = {f"eligible_{s}": int(pc.sum(table.column(f"eligible_{s}")).as_py() or 0)
                for s in exclusion_config.quality.stages} if table.num_rows else {}
    metadata = {**counts.to_dict(), **eligible, "dagster/row_count": table.num_rows, "parts": len(sources),
                "parts_reused": reused, "images_per_second": round(rate, 2),
                "probe_version": probe.version if probe else "none",
                "path": dg.MetadataValue.path(store.uri(store.dir(ASSET, partition)))}
    check = dg.AssetCheckResult(check_name="accounting", passed=passed,
                                metadata={"source_rows": source_rows, "rows": table.num_rows, "excluded": excluded,
                                          "ledger_drops": drops, "ledger_rows": ledger.num_rows})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
