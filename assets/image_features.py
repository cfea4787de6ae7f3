"""`image_features`: perceptual hashes, an embedding and the NSFW score of every kept source image, per drop."""

from dataclasses import asdict
from functools import partial

import dagster as dg
import numpy as np
import pyarrow as pa
from dagster_ray import RayResource
from pydantic import Field

from assets.source_images import source_drops, source_images
from curation.decisions import StageCounts
from curation.embedding import EmbeddingConfig
from curation.features import FEATURES_CODE_VERSION, PASS_THROUGH, FeatureConfig, FeatureExtractor
from curation.stage import StageResources
from orchestration.reads import ReadStats, iter_part, part_rows
from orchestration.resources import ModelSettings, StorageResource
from orchestration.stage_runner import PartStage, Unit, UnitOutput, run_stage, setup_model
from orchestration.stage_runner import config_hash as stage_hash
from orchestration.storage import TableStore

ASSET = "image_features"


class ImageFeaturesConfig(dg.Config):
    """Embedding backend and actor resources."""

    embedding_backend: str = Field(default="open_nsfw", description="'open_nsfw' (bundled) or 'open_clip'.")
    open_clip_model: str = Field(default="ViT-L-14", description="open_clip architecture (open_clip backend).")
    open_clip_pretrained: str | None = Field(
        default=None, description="Local checkpoint path, or a tag present in the local Hugging Face cache.")
    device: str = Field(default="auto", description="'auto' (the models resource decides), 'cpu' or 'cuda'.")
    batch_size: int = Field(default=32, description="Images per forward pass.")
    num_cpus_per_actor: float = Field(default=1.0, description="CPUs per Ray actor (one model per actor).")
    num_gpus_per_actor: float = Field(default=0.0, description="GPUs per Ray actor (declared, never probed).")

    def to_feature_config(self, models: ModelSettings) -> FeatureConfig:
        """The one conversion from Dagster config (and the model settings) to the pure config."""
        threads = max(1, int(self.num_cpus_per_actor))
        return FeatureConfig(
            embedding=EmbeddingConfig(backend=self.embedding_backend, model=self.open_clip_model,
                                      pretrained=models.resolve(self.open_clip_pretrained),
                                      device=models.device_for(self.device, self.num_gpus_per_actor),
                                      batch_size=self.batch_size, threads=threads),
            resources=StageResources(num_cpus=self.num_cpus_per_actor, num_gpus=self.num_gpus_per_actor,
                                     batch_size=self.batch_size),
        )


def features_process(extractor: FeatureExtractor, store: TableStore, payload: str) -> UnitOutput:
    """Worker body: features of one `source_images` part, in batches of the configured size."""
    stats = ReadStats()
    tables = [extractor.process_batch(batch) for batch in iter_part(
        store, payload, [*PASS_THROUGH, "image"], extractor.resources.batch_size, stats)]
    rows = pa.concat_tables(tables) if tables else extractor.empty_table()
    return UnitOutput(rows, [], StageCounts(total=rows.num_rows, kept=rows.num_rows), stats.bytes)


def source_part_units(store: TableStore, partition: str) -> list[Unit]:
    """One unit per `source_images` part of the drop: its path, identity (its footer) and row count."""
    inputs = store.list_parts(store.dir("source_images", partition))
    if not inputs:
        raise RuntimeError(f"source_images has no parts for {partition!r}: materialize source_images first")
    return [Unit(index, path, stage_hash(store.part_summary(path) or {}), part_rows(store, path))
            for index, path in enumerate(inputs)]


@dg.asset(
    partitions_def=source_drops,
    deps=[source_images],
    code_version=FEATURES_CODE_VERSION,
    kinds={"ray", "parquet", "onnx"},
    group_name="features",
    check_specs=[dg.AssetCheckSpec("accounting", asset=ASSET,
                                   description="one features row per source_images row (planned from its parts)")],
)
def image_features(context: dg.AssetExecutionContext, config: ImageFeaturesConfig, storage: StorageResource,
                   ray_cluster: RayResource, models: ModelSettings) -> dg.MaterializeResult:
    """pHash/dHash (+ the pHash of each of 8 orientations), an L2-normalised float16 embedding and the NSFW score."""
    partition = context.partition_key
    store: TableStore = storage.store()
    feature_config = config.to_feature_config(models)
    chash = stage_hash({"config": asdict(feature_config), "code": FEATURES_CODE_VERSION})
    stage = PartStage(ASSET, partition, FEATURES_CODE_VERSION, chash, process=features_process,
                      setup=partial(setup_model, FeatureExtractor, feature_config),
                      resources=feature_config.resources)
    report = run_stage(store, stage, source_part_units(store, partition), context.run.run_id, context.log)
    out = store.read_table(store.dir(ASSET, partition), columns=["sample_id", "nsfw_score", "embedding_model"])
    nsfw = out.column("nsfw_score").to_numpy() if out.num_rows else np.zeros(0)
    models_used = sorted(set(out.column("embedding_model").to_pylist()))
    metadata = {
        **report.metadata(store),
        "embedding_model": ", ".join(models_used),
        "nsfw_score_mean": float(nsfw.mean()) if nsfw.size else 0.0,
        "nsfw_score_p99": float(np.quantile(nsfw, 0.99)) if nsfw.size else 0.0,
    }
    return dg.MaterializeResult(metadata=metadata, check_results=[report.accounting_check()])
