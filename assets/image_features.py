"""`image_features`: perceptual hashes, an embedding and the NSFW score of every kept source image, per drop."""

import hashlib
import json
from dataclasses import asdict

import dagster as dg
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_ray import RayResource
from pydantic import Field

from assets.source_images import source_drops, source_images
from curation.embedding import EmbeddingConfig
from curation.features import FEATURES_CODE_VERSION, PASS_THROUGH, FeatureConfig, FeatureExtractor
from curation.stage import StageResources
from orchestration.ray_adapter import Throughput, run_units_on_actors
from orchestration.resources import ModelSettings, StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore

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


def _config_hash(config: FeatureConfig) -> str:
    payload = json.dumps({"config": asdict(config), "code": FEATURES_CODE_VERSION}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def _input_id(summary: dict) -> str:
    """Identity of an input part: what the ingest wrote into its footer."""
    return hashlib.sha256(json.dumps(summary, sort_keys=True).encode()).hexdigest()[:16]


def features_for_part(stage: FeatureExtractor, task: tuple) -> dict:
    """Actor body: features of one `source_images` part, written as the matching `image_features` part."""
    store, partition, index, in_path, input_id, chash, run_id = task
    clock = Throughput()
    with store.fs.open_input_file(in_path) as f:
        reader = pq.ParquetFile(f)
        tables = [stage.process_batch(pa.Table.from_batches([batch]))
                  for batch in reader.iter_batches(batch_size=stage.resources.batch_size,
                                                   columns=[*PASS_THROUGH, "image"])]
    rows = pa.concat_tables(tables) if tables else None
    if rows is None:  # an input part with no kept rows still gets its (empty) output part
        rows = stage.empty_table()
    summary = {"unit": index, "input_id": input_id, "config_hash": chash, "run_id": run_id,
               "counts": {"total": rows.num_rows, "kept": rows.num_rows}, "seconds": round(clock.elapsed(), 3)}
    store.write_parquet(store.part_path(ASSET, partition, index), rows, summary)
    return summary


@dg.asset(
    partitions_def=source_drops,
    deps=[source_images],
    code_version=FEATURES_CODE_VERSION,
    kinds={"ray", "parquet", "onnx"},
    group_name="features",
    check_specs=[dg.AssetCheckSpec("accounting", asset=ASSET,
                                   description="one features row per source_images row, same sample ids")],
)
def image_features(context: dg.AssetExecutionContext, config: ImageFeaturesConfig, storage: StorageResource,
                   ray_cluster: RayResource, models: ModelSettings) -> dg.MaterializeResult:
    """pHash/dHash (+ the pHash of each of 8 orientations), an L2-normalised float16 embedding and the NSFW score."""
    partition = context.partition_key
    store: TableStore = storage.store()
    feature_config = config.to_feature_config(models)
    chash = _config_hash(feature_config)
    inputs = store.list_parts(store.dir("source_images", partition))
    if not inputs:
        raise RuntimeError(f"source_images has no parts for {partition!r}: materialize source_images first")
    store.remove_parts_from(store.dir(ASSET, partition), len(inputs))
    todo = []
    for index, in_path in enumerate(inputs):
        input_id = _input_id(store.part_summary(in_path) or {})
        done = store.part_summary(store.part_path(ASSET, partition, index))
        if not (done and done.get("input_id") == input_id and done.get("config_hash") == chash):
            todo.append((store, partition, index, in_path, input_id, chash, context.run.run_id))
    context.log.info(f"{len(inputs)} part(s), {len(inputs) - len(todo)} already done, {len(todo)} to compute")

    clock = Throughput()
    computed = sum(s["counts"]["total"] for s in run_units_on_actors(
        FeatureExtractor(feature_config), features_for_part, todo,
        progress=lambda d, t: context.log.debug(f"features: {d}/{t} parts")))
    rate = clock.per_second(computed)

    ids_in = store.read_table(store.dir("source_images", partition), columns=["sample_id"]).column("sample_id")
    out = store.read_table(store.dir(ASSET, partition), columns=["sample_id", "nsfw_score", "embedding_model"])
    passed = out.num_rows == len(ids_in) and sorted(out.column("sample_id").to_pylist()) == sorted(ids_in.to_pylist())
    nsfw = out.column("nsfw_score").to_numpy() if out.num_rows else np.zeros(0)
    models = sorted(set(out.column("embedding_model").to_pylist()))
    store.write_json(f"{store.dir(ASSET, partition)}/{SUCCESS_MARKER}",
                     {"config_hash": chash, "code_version": FEATURES_CODE_VERSION, "run_id": context.run.run_id,
                      "parts": len(inputs), "rows": out.num_rows, "input_ids": [
                          _input_id(store.part_summary(p) or {}) for p in inputs]})
    metadata = {
        "total": len(ids_in),
        "kept": out.num_rows,
        "dagster/row_count": out.num_rows,
        "parts": len(inputs),
        "parts_reused": len(inputs) - len(todo),
        "images_per_second": round(rate, 2),
        "embedding_model": ", ".join(models),
        "nsfw_score_mean": float(nsfw.mean()) if nsfw.size else 0.0,
        "nsfw_score_p99": float(np.quantile(nsfw, 0.99)) if nsfw.size else 0.0,
        "path": dg.MetadataValue.path(store.uri(store.dir(ASSET, partition))),
    }
    check = dg.AssetCheckResult(check_name="accounting", passed=passed,
                                metadata={"source_rows": len(ids_in), "feature_rows": out.num_rows})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
