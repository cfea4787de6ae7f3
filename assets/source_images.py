"""`source_images`: one partition per source drop; every input becomes a row or a ledger entry."""

import hashlib
import json
from dataclasses import asdict

import dagster as dg
import pyarrow.dataset as pads
from dagster_ray import RayResource
from pydantic import Field

from curation.decisions import StageCounts, decisions_table
from curation.image_io import ProbeLimits
from curation.ingest import INGEST_CODE_VERSION, ROW_GROUP_SIZE, IngestConfig, ingest_unit
from curation.opt_out import OptOutList
from curation.sources import ReadLimits, WorkUnit, plan_units
from orchestration.opt_outs import load_opt_outs
from orchestration.ray_adapter import Throughput, run_units
from orchestration.resources import StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore

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

    def to_ingest_config(self) -> IngestConfig:
        """The one conversion from Dagster config to the pure config."""
        return IngestConfig(
            probe=ProbeLimits(max_pixels=self.max_pixels, min_side=self.min_side, max_frames=self.max_frames),
            read=ReadLimits(max_file_bytes=self.max_file_bytes, max_sidecar_bytes=self.max_sidecar_bytes,
                            files_per_unit=self.files_per_unit, rows_per_unit=self.rows_per_unit),
            default_licence=self.default_licence,
        )


def config_hash(config: IngestConfig) -> str:
    """Identity of what decides a part's content: the config and the code version."""
    payload = json.dumps({"config": asdict(config), "code": INGEST_CODE_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def ingest_and_write(task: tuple[TableStore, str, WorkUnit, IngestConfig, str, str, OptOutList]) -> dict:
    """Ray task body: ingest one unit, write its ledger part, then its data part (the completion marker)."""
    store, partition, unit, config, run_id, chash, opt_outs = task
    result = ingest_unit(unit, partition, config, opt_outs)
    summary = {"unit": unit.index, "fingerprint": unit.fingerprint, "config_hash": chash, "run_id": run_id,
               "counts": result.counts.to_dict()}
    ledger = decisions_table(result.decisions, run_id, INGEST_CODE_VERSION)
    store.write_parquet(store.part_path("decisions/" + ASSET, partition, unit.index), ledger, summary)
    store.write_parquet(store.part_path(ASSET, partition, unit.index), result.rows, summary, ROW_GROUP_SIZE)
    return summary


def _finished_summary(store: TableStore, partition: str, unit: WorkUnit, chash: str) -> dict | None:
    summary = store.part_summary(store.part_path(ASSET, partition, unit.index))
    ledger_ok = store.exists(store.part_path("decisions/" + ASSET, partition, unit.index))
    current = summary and summary.get("fingerprint") == unit.fingerprint and summary.get("config_hash") == chash
    return summary if current and ledger_ok else None


def verify_accounting(store: TableStore, partition: str, n_units: int) -> tuple[bool, dict]:
    """Read the partition back and check in = kept + dropped, with a reason for every drop.

    Independent of what the workers reported: rows are counted in the data parts, drops in the ledger parts, and
    inputs from each part's footer (the reader's own count).
    """
    data_dir = store.dir(ASSET, partition)
    ledger_dir = store.decisions_dir(ASSET, partition)
    parts = store.list_parts(data_dir)
    totals = [store.part_summary(p) for p in parts]
    total_in = sum(s["counts"]["total"] for s in totals if s)
    kept = store.read_table(data_dir, columns=["source_uri"]).num_rows if parts else 0
    ledger = store.read_table(ledger_dir, columns=["decision", "reason", "source_uri"],
                              filter=pads.field("decision") == "drop")
    dropped = ledger.num_rows
    missing_reason = sum(1 for r in ledger.column("reason").to_pylist() if not r) if dropped else 0
    passed = len(parts) == n_units and total_in == kept + dropped and missing_reason == 0
    return passed, {"parts": len(parts), "expected_parts": n_units, "inputs": total_in, "kept": kept,
                    "dropped": dropped, "drops_without_reason": missing_reason}


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
    chash = config_hash(ingest_config)
    clock = Throughput()
    units = plan_units(source, ingest_config.read)
    seconds_plan = clock.elapsed()
    removed = store.remove_parts_from(store.dir(ASSET, partition), len(units))
    store.remove_parts_from(store.decisions_dir(ASSET, partition), len(units))
    if removed:
        context.log.info(f"removed {len(removed)} stale part(s) from an earlier plan of this drop")

    summaries: list[dict] = []
    todo: list[WorkUnit] = []
    for unit in units:
        done = _finished_summary(store, partition, unit, chash)
        (summaries.append(done) if done else todo.append(unit))
    context.log.info(f"{source}: {len(units)} unit(s), {len(units) - len(todo)} already finished, {len(todo)} to run")

    clock = Throughput()
    run_id = context.run.run_id
    opt_outs = load_opt_outs(store)  # new inputs honour it here; curated ones at rebalanced_images and the shards
    tasks = [(store, partition, unit, ingest_config, run_id, chash, opt_outs) for unit in todo]
    fresh = StageCounts()
    for summary in run_units(ingest_and_write, tasks, num_cpus=1.0,
                             progress=lambda d, t: context.log.debug(f"ingest: {d}/{t} units")):
        summaries.append(summary)
        fresh.add(StageCounts.from_dict(summary["counts"]))

    images_per_second = clock.per_second(fresh.total)
    seconds_ingest = clock.elapsed()
    counts = StageCounts()
    for s in summaries:
        counts.add(StageCounts.from_dict(s["counts"]))
    clock = Throughput()
    passed, check_meta = verify_accounting(store, partition, len(units))
    seconds_verify = clock.elapsed()
    store.write_json(f"{store.dir(ASSET, partition)}/{SUCCESS_MARKER}",
                     {"source": source, "config_hash": chash, "code_version": INGEST_CODE_VERSION, "run_id": run_id,
                      "parts": len(units), "counts": counts.to_dict(), "accounting_passed": passed})

    reasons = "\n".join(f"| {k[len('dropped_'):]} | {v} |" for k, v in counts.to_dict().items()
                        if k.startswith("dropped_"))
    metadata = {
        **counts.to_dict(),
        "dagster/row_count": counts.kept,
        "source": dg.MetadataValue.path(source),
        "path": dg.MetadataValue.path(store.uri(store.dir(ASSET, partition))),
        "decisions_path": dg.MetadataValue.path(store.uri(store.decisions_dir(ASSET, partition))),
        "parts": len(units),
        "parts_reused": len(units) - len(todo),
        "images_per_second": round(images_per_second, 2),
        "seconds_plan": round(seconds_plan, 3),
        "seconds_ingest": round(seconds_ingest, 3),
        "seconds_verify": round(seconds_verify, 3),
        "drop_reasons": dg.MetadataValue.md(f"| reason | count |\n| --- | --- |\n{reasons}" if reasons else "none"),
    }
    check = dg.AssetCheckResult(check_name="accounting", passed=passed, metadata=check_meta,
                                severity=dg.AssetCheckSeverity.ERROR)
    return dg.MaterializeResult(metadata=metadata, check_results=[check])
