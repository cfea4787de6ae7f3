"""`style_embeddings`: a style descriptor (separate from the content embedding) of every kept source image, per drop.

Computed along the drop's `source_images` parts like `image_features` (one unit per part, reused while the part
and the configuration are unchanged), so a new drop costs only its own images; the global consumers
(`style_reference_pairs`, `creator_style_index`) keep the curated, not opted-out samples.
"""

from dataclasses import asdict
from functools import partial

import dagster as dg
import pyarrow as pa
from dagster_ray import RayResource
from pydantic import Field

from assets.image_features import source_part_units
from assets.source_images import source_drops, source_images
from curation.decisions import StageCounts
from curation.stage import StageResources
from curation.style.descriptor import STYLE_CODE_VERSION, StyleConfig, descriptor_name
from curation.style.extract import PASS_THROUGH, StyleExtractor
from orchestration.reads import ReadStats, iter_part
from orchestration.resources import ModelSettings, StorageResource
from orchestration.stage_runner import PartStage, UnitOutput, run_stage, setup_model
from orchestration.stage_runner import config_hash as stage_hash
from orchestration.storage import TableStore

ASSET = "style_embeddings"


class StyleEmbeddingsConfig(dg.Config):
    """Style backend, its local weights, descriptor shape and actor resources."""

    backend: str = Field(default=StyleConfig.backend,
                         description="'open_nsfw_gram' (bundled CNN), 'clip' (CLIP ViT) or 'csd' (CSD style head).")
    weights: str | None = Field(
        default=None, description="clip/csd: local checkpoint file or model directory (relative: under the models "
                                  "resource's weights_dir). Required by them; never downloaded.")
    model: str = Field(default="", description="clip with a checkpoint file: its open_clip architecture "
                                               "(e.g. 'ViT-L-14-quickgelu').")
    device: str = Field(default="auto", description="'auto' (the models resource decides), 'cpu' or 'cuda'.")
    dim: int = Field(default=StyleConfig.dim, description="Length of the stored style descriptor.")
    gram_channels: int = Field(default=StyleConfig.gram_channels,
                               description="Channels each layer is reduced to before its covariance.")
    seed: int = Field(default=StyleConfig.seed, description="Seed of the fixed projections (descriptor identity).")
    batch_size: int = Field(default=StyleConfig.batch_size, description="Images per forward pass.")
    num_cpus_per_actor: float = Field(default=1.0, description="CPUs per Ray actor (one model per actor).")
    num_gpus_per_actor: float = Field(default=0.0, description="GPUs per Ray actor (declared, never probed).")

    def to_style_config(self, models: ModelSettings | None = None) -> StyleConfig:
        """The one conversion from Dagster config (and the model settings) to the pure config."""
        models = models or ModelSettings(weights_dir=None)
        return StyleConfig(backend=self.backend, weights=models.resolve(self.weights), model=self.model,
                           device=models.device_for(self.device, self.num_gpus_per_actor), dim=self.dim,
                           gram_channels=self.gram_channels, seed=self.seed, batch_size=self.batch_size,
                           threads=max(1, int(self.num_cpus_per_actor)))


def style_config_hash(style_config: StyleConfig) -> str:
    """The stage's config hash. A production backend's covers its descriptor name, i.e. the weights' hash (new
    weights at the same path recompute every part; another path to the same files or another device does not); the
    default backend hashes the fields it always had, so parts stored before the backends existed are reused.

    Raises:
        ValueError, FileNotFoundError: the configured weights are missing or unreadable (named).
    """
    descriptor = descriptor_name(style_config)
    identity: dict = {k: v for k, v in asdict(style_config).items() if k not in ("weights", "model", "device")}
    if style_config.backend != "open_nsfw_gram":
        identity |= {"descriptor": descriptor}
    return stage_hash({"config": identity, "code": STYLE_CODE_VERSION})


def style_process(extractor: StyleExtractor, store: TableStore, payload: str) -> UnitOutput:
    """Worker body: style descriptors of one `source_images` part."""
    stats = ReadStats()
    tables, decisions, counts = [], [], StageCounts()
    for batch in iter_part(store, payload, [*PASS_THROUGH, "image"], extractor.config.batch_size * 4, stats):
        rows, batch_decisions, batch_counts = extractor.process(batch)
        tables.append(rows)
        decisions += batch_decisions
        counts.add(batch_counts)
    if not tables:
        tables.append(extractor.process(pa.table({c: pa.array([], pa.string()) for c in PASS_THROUGH} |
                                                 {"image": pa.array([], pa.binary())}))[0])
    return UnitOutput(pa.concat_tables(tables), decisions, counts, stats.bytes)


@dg.asset(
    partitions_def=source_drops,
    deps=[source_images],
    code_version=STYLE_CODE_VERSION,
    kinds={"ray", "parquet", "onnx", "pytorch"},
    group_name="style",
    check_specs=[dg.AssetCheckSpec("accounting", asset=ASSET,
                                   description="source_images rows = style rows + drops (planned from its parts)")],
)
def style_embeddings(context: dg.AssetExecutionContext, config: StyleEmbeddingsConfig, storage: StorageResource,
                     ray_cluster: RayResource, models: ModelSettings) -> dg.MaterializeResult:
    """An L2-normalised float16 style descriptor per image: by default channel statistics and reduced Gram matrices
    of two open-NSFW layers, projected (`curation.style.descriptor`); `clip` / `csd` from local weights
    (`curation.style.backends`)."""
    partition = context.partition_key
    store = storage.store()
    style_config = config.to_style_config(models)
    chash = style_config_hash(style_config)  # hashes the weights: a missing path fails here, before any actor
    stage = PartStage(ASSET, partition, STYLE_CODE_VERSION, chash, process=style_process,
                      setup=partial(setup_model, StyleExtractor, style_config),
                      resources=StageResources(num_cpus=config.num_cpus_per_actor, num_gpus=config.num_gpus_per_actor,
                                               batch_size=config.batch_size))
    report = run_stage(store, stage, source_part_units(store, partition), context.run.run_id, context.log)
    models = sorted(set(store.read_table(store.dir(ASSET, partition), columns=["style_model"])
                        .column("style_model").to_pylist()))
    return dg.MaterializeResult(metadata={**report.metadata(store), "style_model": ", ".join(models)},
                                check_results=[report.accounting_check()])
