"""`dataset_card` (what the training data is) and `dataset_audit` (one report per run, with what changed)."""

import datetime
import json
import posixpath

import dagster as dg
import pyarrow as pa

from assets.training_shards import ASSET as SHARDS
from assets.training_shards import STAGE_KEYS, training_shards
from curation.audit import diff, summarise, to_markdown
from orchestration.opt_outs import load_opt_outs
from orchestration.resources import StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore

REPORT_CODE_VERSION = "reports-1"
_ASSETS = ("source_images", "image_features", "exclusion_signals", "deduplicated_images", "rebalanced_images",
           "ocr_annotations", "captions", "prompt_variants", "training_shards", "dit_checkpoint")


def collect(store: TableStore) -> tuple[dict, dict[str, set[str]]]:
    """The report's content and the sample ids in each stage's shards."""
    sources = {}
    for partition, uri in store.registered_sources().items():
        marker = store.read_json(f"{store.dir('source_images', partition)}/{SUCCESS_MARKER}") or {}
        counts = marker.get("counts", {})
        sources[partition] = {"uri": uri, "inputs": counts.get("total", 0), "kept": counts.get("kept", 0)}
    ledger = store.read_decisions().select(["sample_id", "stage", "decision", "reason"])
    shards, ids = {}, {}
    for stage in store.list_partitions(SHARDS):
        table = store.read_table(store.dir(SHARDS, stage), columns=["sample_id", "bucket", "license", "source_uri"])
        shards[stage] = table
        ids[stage] = set(table.column("sample_id").to_pylist()) if table.num_rows else set()
    rebalanced = store.read_table(store.dir("rebalanced_images"), columns=["kept"])
    curated = sum(rebalanced.column("kept").to_pylist()) if rebalanced.num_rows else 0
    hashes, versions = {}, {}
    for asset in _ASSETS:
        for partition in store.list_partitions(asset):
            marker = store.read_json(f"{store.dir(asset, partition)}/{SUCCESS_MARKER}") or {}
            key = asset if partition == "_" else f"{asset}[{partition}]"
            if marker.get("config_hash"):
                hashes[key] = marker["config_hash"]
            if marker.get("code_version"):
                versions[asset] = marker["code_version"]
    report = summarise(sources, ledger, shards, curated, len(load_opt_outs(store)), hashes, versions)
    return report, ids


def _ids_table(ids: dict[str, set[str]]) -> pa.Table:
    rows = [(stage, sid) for stage, s in sorted(ids.items()) for sid in sorted(s)]
    return pa.table({"stage": pa.array([r[0] for r in rows], pa.string()),
                     "sample_id": pa.array([r[1] for r in rows], pa.string())})


def _ids_from(table: pa.Table) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for stage, sid in zip(table.column("stage").to_pylist(), table.column("sample_id").to_pylist(), strict=True):
        out.setdefault(stage, set()).add(sid)
    return out


@dg.asset(
    deps=[training_shards],
    code_version=REPORT_CODE_VERSION,
    kinds={"json", "markdown"},
    group_name="reports",
    check_specs=[dg.AssetCheckSpec("every_stage_present", asset="dataset_card",
                                   description="a shard partition exists for every curriculum stage")],
)
def dataset_card(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """Counts per stage and bucket, drop reasons, sources and licences, config hashes and code versions."""
    store = storage.store()
    report, _ = collect(store)
    report["run_id"] = context.run.run_id
    report["created_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    directory = store.dir("dataset_card")
    markdown = to_markdown(report, "Dataset card")
    store.write_json(posixpath.join(directory, "dataset_card.json"), report)
    store.write_bytes(posixpath.join(directory, "dataset_card.md"), markdown.encode())
    missing = [s for s in STAGE_KEYS if s not in report["stages"]]
    return dg.MaterializeResult(
        metadata={"card": dg.MetadataValue.md(markdown), "curated": report["curated"], "inputs": report["inputs"],
                  **{f"rows_{s}": v["rows"] for s, v in report["stages"].items()},
                  "path": dg.MetadataValue.path(store.uri(directory))},
        check_results=[dg.AssetCheckResult(check_name="every_stage_present", passed=not missing,
                                           metadata={"missing": ", ".join(missing) or "none"})])


@dg.asset(
    deps=[training_shards],
    code_version=REPORT_CODE_VERSION,
    kinds={"json", "markdown"},
    group_name="reports",
    check_specs=[dg.AssetCheckSpec("opt_outs_honoured", asset="dataset_audit",
                                   description="no opted-out sample is in any shard")],
)
def dataset_audit(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """One report per run: counts per source, licences, drops per stage and reason, opt-outs, changes since the
    previous audit."""
    store = storage.store()
    directory = store.dir("dataset_audit")
    report, ids = collect(store)
    run_id = context.run.run_id
    report["run_id"] = run_id
    report["created_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    latest = store.read_json(posixpath.join(directory, "latest.json"))
    previous = store.read_json(posixpath.join(directory, f"{latest['run_id']}.json")) if latest else None
    previous_ids = {}
    if latest and store.exists(posixpath.join(directory, f"{latest['run_id']}.ids.parquet")):
        previous_ids = _ids_from(store.read_part(posixpath.join(directory, f"{latest['run_id']}.ids.parquet")))
    report["changes"] = diff(previous, report, previous_ids, ids)
    ledger = store.read_decisions().select(["sample_id", "stage", "decision"]).to_pylist()
    opted = {d["sample_id"] for d in ledger if d["stage"] == "opt_out" and d["decision"] == "drop"}
    leaked = sorted({sid for stage_ids in ids.values() for sid in stage_ids} & opted)
    report["opt_outs"]["in_shards"] = len(leaked)
    markdown = to_markdown(report, "Dataset audit")
    store.write_parquet(posixpath.join(directory, f"{run_id}.ids.parquet"), _ids_table(ids))
    store.write_json(posixpath.join(directory, f"{run_id}.json"), report)
    store.write_bytes(posixpath.join(directory, f"{run_id}.md"), markdown.encode())
    store.write_json(posixpath.join(directory, "latest.json"), {"run_id": run_id})
    return dg.MaterializeResult(
        metadata={"report": dg.MetadataValue.md(markdown), "opted_out_samples": len(opted),
                  "changes": dg.MetadataValue.json(report["changes"]),
                  "path": dg.MetadataValue.path(store.uri(posixpath.join(directory, f"{run_id}.md")))},
        check_results=[dg.AssetCheckResult(check_name="opt_outs_honoured", passed=not leaked,
                                           metadata={"opted_out_in_shards": len(leaked),
                                                     "examples": json.dumps(leaked[:5])})])
