"""`source_images`: one partition per source drop; every input becomes a row or a ledger entry."""

from dataclasses import asdict
from functools import partial

import dagster as dg
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from dagster_ray import RayResource
from pydantic import Field

from curation.image_io import ProbeLimits
from curation.ingest import INGEST_CODE_VERSION, ROW_GROUP_SIZE, IngestConfig, ingest_unit
from curation.opt_out import OptOutList
from curation.sources import ReadLimits, WorkUnit, plan_units
from curation.stage import StageResources
from curation.tdm import TdmPolicy
from orchestration.opt_outs import load_opt_outs
from orchestration.ray_adapter import Throughput
from orchestration.resources import StorageResource
from orchestration.stage_runner import PartStage, Unit, UnitOutput, run_stage
from orchestration.stage_runner import config_hash as stage_hash
from orchestration.storage import TableStore

ASSET = "source_images"
source_drops = dg.DynamicPartitionsDefinition(name="source_drops")


class SourceImagesConfig(dg.Config):
    """Ingest limits; defaults are safe for untrusted crawl drops."""

    max_pixels: int = Field(default=ProbeLimits.max_pixels, description="Pixel limit per frame (decompression bombs).")
    min_side: int = Field(default=ProbeLimits.min_side, description="Smallest accepted shorter side, in pixels.")
    max_frames: int = Field(default=ProbeLimits.max_frames, description="Most frames accepted in an animation.")
    max_file_bytes: int = Field(default=ReadLimits.max_file_bytes, description="Largest input file, in bytes.")
    max_sidecar_bytes: int = Field(default=ReadLimits.max_sidecar_bytes, description="Largest sidecar, in bytes.")
    files_per_unit: int = Field(default=ReadLimits.files_per_unit, description="Loose files per part / Ray task.")
    rows_per_unit: int = Field(default=ReadLimits.rows_per_unit, description="Manifest rows per part / Ray task.")
    default_licence: str | None = Field(default=None, description="Licence for samples whose sidecars name none.")
    tdm_reservations: bool = Field(default=TdmPolicy.enabled,
                                   description="Drop inputs whose metadata reserves TDM / AI training (opt_out).")
    tdm_plus_barred: list[str] = Field(default=list(TdmPolicy.plus_barred),
                                       description="PLUS DataMining codes that bar an input.")
    tdm_c2pa_uses: list[str] = Field(default=list(TdmPolicy.c2pa_uses),
                                     description="C2PA/CAWG training-mining uses whose notAllowed bars an input.")
    allowed_roots: list[str] = Field(default_factory=list, description="Directories or URI prefixes outside the "
                                     "drop that manifest paths may point into (a mounted image store).")
    max_key_bytes: int = Field(default=ReadLimits.max_key_bytes, description="Most bytes held per WebDataset key.")

    def to_ingest_config(self) -> IngestConfig:
        """The one conversion from Dagster config to the pure config."""
        return IngestConfig(
            probe=ProbeLimits(max_pixels=self.max_pixels, min_side=self.min_side, max_frames=self.max_frames),
            read=ReadLimits(max_file_bytes=self.max_file_bytes, max_sidecar_bytes=self.max_sidecar_bytes,
                            files_per_unit=self.files_per_unit, rows_per_unit=self.rows_per_unit,
                            allowed_roots=tuple(self.allowed_roots), max_key_bytes=self.max_key_bytes),
            default_licence=self.default_licence,
            tdm=TdmPolicy(enabled=self.tdm_reservations, plus_barred=tuple(self.tdm_plus_barred),
                          c2pa_uses=tuple(self.tdm_c2pa_uses)),
        )


def config_hash(config: IngestConfig) -> str:
    """Identity of what decides a part's content: the config and the code version."""
    return stage_hash({"config": asdict(config), "code": INGEST_CODE_VERSION})


def planned_inputs(unit: WorkUnit) -> int | None:
    """Inputs a unit must account for, known from the plan alone (None for a tar: only its reader can count)."""
    if unit.kind == "files":
        return len(unit.files)
    if unit.kind == "parquet":
        if unit.row_groups == (-1,):  # an unreadable manifest: one refusal
            return 1
        fs, path = fsspec.core.url_to_fs(f"{unit.root.rstrip('/')}/{unit.container}")
        with fs.open(path, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        return sum(meta.row_group(g).num_rows for g in unit.row_groups)
    return None


def previous_inputs(store: TableStore, partition: str) -> list[str]:
    """The `source_uri`s the last run of this drop stored (rows and ledger), so a vanished input is ledgered."""
    uris: list[str] = []
    for directory in (store.dir(ASSET, partition), store.decisions_dir(ASSET, partition)):
        for path in store.list_parts(directory):
            try:
                uris += store.read_part(path, ["source_uri"]).column("source_uri").to_pylist()
            except (OSError, pa.ArrowException):  # a damaged part is recomputed anyway
                continue
    return uris


def ingest_process(opt_outs: OptOutList, store: TableStore, payload: tuple[str, WorkUnit, IngestConfig]) -> UnitOutput:
    """Worker body: one work unit of a drop -> its rows, ledger decisions and counts."""
    partition, unit, config = payload
    result = ingest_unit(unit, partition, config, opt_outs)
    return UnitOutput(result.rows, result.decisions, result.counts, result.bytes_read)


@dg.asset(
    partitions_def=source_drops,
    code_version=INGEST_CODE_VERSION,
    kinds={"ray", "parquet"},
    group_name="ingest",
    check_specs=[dg.AssetCheckSpec("accounting", asset=ASSET,
                                   description="inputs = kept rows + dropped rows, each drop with a reason")],
)
def source_images(context: dg.AssetExecutionContext, config: SourceImagesConfig, storage: StorageResource,
                  ray_cluster: RayResource) -> dg.MaterializeResult:
    """Every input of one source drop: original bytes, decoded facts and all metadata; refusals go to decisions."""
    partition = context.partition_key
    store = storage.store()
    source = store.source_uri(partition)
    ingest_config = config.to_ingest_config()
    clock = Throughput()
    work = plan_units(source, ingest_config.read, previous_inputs(store, partition))
    units = [Unit(w.index, (partition, w, ingest_config), w.fingerprint, planned_inputs(w)) for w in work]
    seconds_plan = clock.elapsed()
    opt_outs = load_opt_outs(store)  # new inputs honour it here; curated ones at rebalanced_images and the shards
    stage = PartStage(ASSET, partition, INGEST_CODE_VERSION, config_hash(ingest_config),
                      setup=partial(_identity, opt_outs), process=ingest_process,
                      resources=StageResources(num_cpus=1.0), row_group_size=ROW_GROUP_SIZE)
    report = run_stage(store, stage, units, context.run.run_id, context.log)
    metadata = {**report.metadata(store), "source": dg.MetadataValue.path(source),
                "seconds_plan": round(seconds_plan, 3)}
    return dg.MaterializeResult(metadata=metadata, check_results=[report.accounting_check()])


def _identity(value):
    return value
