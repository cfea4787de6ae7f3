"""`exclusion_signals`: AI-generated, NSFW and artifact signals and stage eligibility for every source image."""

import json
from dataclasses import asdict
from functools import partial

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from dagster_ray import RayResource
from pydantic import Field

from assets.ai_image_probe import ai_image_probe, load_probe
from assets.image_features import ASSET as FEATURES
from assets.image_features import image_features, source_part_units
from assets.source_images import source_drops, source_images
from captioning.ocr import OcrConfig
from curation.decisions import StageCounts
from curation.exclusion import EXCLUSION_CODE_VERSION, ExclusionConfig, assess, exclusion_schema
from curation.features import embedding_matrix
from curation.probe import Probe
from curation.quality import QualityConfig
from curation.stage import StageResources
from curation.text_density import TextDetector
from orchestration.reads import ReadStats, read_part
from orchestration.resources import StorageResource
from orchestration.stage_runner import PartStage, Unit, UnitOutput, run_stage
from orchestration.stage_runner import config_hash as stage_hash
from orchestration.storage import TableStore

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
    num_cpus_per_actor: float = Field(default=1.0, description="CPUs per exclusion actor (also the text detector's "
                                                               "onnxruntime threads).")

    def to_exclusion_config(self) -> ExclusionConfig:
        """The one conversion from Dagster config to the pure config."""
        return ExclusionConfig(
            nsfw_threshold=self.nsfw_threshold, check_c2pa=self.check_c2pa, check_watermark=self.check_watermark,
            drop_artifacts=self.drop_artifacts, check_small_text=self.check_small_text,
            quality=QualityConfig(stages=tuple(self.stages), max_aspect=self.max_aspect,
                                  max_border_fraction=self.max_border_fraction, max_blockiness=self.max_blockiness,
                                  min_blocking_excess=self.min_blocking_excess, max_small_text=self.max_small_text,
                                  max_detail_loss=self.max_detail_loss))


def exclusion_process(detector: TextDetector, store: TableStore, payload: tuple) -> UnitOutput:
    """Worker body: signals of one source part (its features part alongside); drops go to the ledger."""
    source_path, features_path, config, probe_json = payload
    stats = ReadStats()
    source = read_part(store, source_path, ["sample_id", "source_uri", "image", "format", "metadata"], stats)
    features = read_part(store, features_path, ["source_uri", "nsfw_score", "embedding", "embedding_model"], stats)
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
                               probe_scores.get(rec["source_uri"]), config, detector)
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
    table = pa.Table.from_pylist(rows, schema=exclusion_schema(config.quality.stages))
    return UnitOutput(table, decisions, counts, stats.bytes)


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
    probe = load_probe(store)
    if probe is None:
        context.log.warning("no ai_image_probe trained: the learned-probe signal is off for this run")
    chash = stage_hash({"config": asdict(exclusion_config), "code": EXCLUSION_CODE_VERSION,
                        "probe": probe.version if probe else None})
    sources = source_part_units(store, partition)
    features = store.list_parts(store.dir(FEATURES, partition))
    if len(features) != len(sources):
        raise RuntimeError(f"{partition!r}: materialize image_features first ({len(sources)} source part(s), "
                           f"{len(features)} feature part(s))")
    probe_json = probe.to_json() if probe else None
    units = [Unit(u.index, (u.payload, feat, exclusion_config, probe_json),
                  stage_hash([u.fingerprint, store.part_summary(feat)]), u.inputs)
             for u, feat in zip(sources, features, strict=True)]
    # the detector's onnxruntime threads match the actor's CPUs: left to the runtime, each actor starts one
    # spinning thread per core and two actors on 2 cores ran 1.5x slower than with one thread each
    threads = max(1, int(config.num_cpus_per_actor))
    stage = PartStage(ASSET, partition, EXCLUSION_CODE_VERSION, chash,
                      setup=partial(TextDetector, OcrConfig(threads=threads)), process=exclusion_process,
                      rows_are="all", resources=StageResources(num_cpus=config.num_cpus_per_actor))
    report = run_stage(store, stage, units, context.run.run_id, context.log)
    table = store.read_table(store.dir(ASSET, partition), columns=["excluded", *[f"eligible_{s}" for s in
                                                                                exclusion_config.quality.stages]])
    excluded = int(pc.sum(table.column("excluded")).as_py() or 0) if table.num_rows else 0
    eligible = {f"eligible_{s}": int(pc.sum(table.column(f"eligible_{s}")).as_py() or 0)
                for s in exclusion_config.quality.stages} if table.num_rows else {}
    metadata = {**report.metadata(store), **eligible, "dagster/row_count": table.num_rows,
                "probe_version": probe.version if probe else "none"}
    check = report.accounting_check()
    passed = check.passed and excluded == report.accounting["dropped"]
    check = dg.AssetCheckResult(check_name="accounting", passed=passed, severity=check.severity,
                                metadata={**report.accounting, "excluded_rows": excluded})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
