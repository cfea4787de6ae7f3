"""`training_shards`: per curriculum stage, the eligible curated samples resized into aspect buckets, with every prompt
variant, the sample weight and provenance."""

import io
import json
from dataclasses import asdict

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
from dagster_ray import RayResource
from PIL import Image
from pydantic import Field

from assets.exclusion_signals import ASSET as EXCLUSION
from assets.prompt_variants import ASSET as VARIANTS
from assets.prompt_variants import prompt_variants
from assets.rebalanced_images import ASSET as REBALANCED
from assets.rebalanced_images import rebalanced_images
from curation.decisions import Decision, StageCounts
from curation.opt_out import opt_out_decision
from curation.shards import (
    SHARD_CODE_VERSION,
    SHARD_SCHEMA,
    VARIANT_KINDS,
    ShardConfig,
    aspect_buckets,
    ineligible_decision,
    prepare,
)
from curation.stage import StageResources
from orchestration.opt_outs import load_opt_outs
from orchestration.reads import ReadStats, read_located
from orchestration.resources import StorageResource
from orchestration.sample_parts import current_rows, read_source_rows, source_locator
from orchestration.stage_runner import PartStage, Unit, UnitOutput, run_stage
from orchestration.stage_runner import config_hash as stage_hash
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "training_shards"
STAGE_KEYS = ["256", "512", "1024"]
curriculum_stages = dg.StaticPartitionsDefinition(STAGE_KEYS)


class TrainingShardsConfig(dg.Config):
    """How each curriculum stage's shards are cut."""

    stage_sizes: dict[str, int] = Field(default={}, description="Pixel size per stage key (default: the key itself; "
                                                                "the demo trains at tiny sizes).")
    multiple: int | None = Field(default=None, description="Bucket sides are multiples of this (default size/16).")
    max_upscale: float = Field(default=ShardConfig.max_upscale, description="Largest accepted upscale factor.")
    image_format: str = Field(default=ShardConfig.image_format, description="JPEG or PNG.")
    quality: int = Field(default=ShardConfig.quality, description="JPEG quality.")
    target_shard_mb: float = Field(default=ShardConfig.target_shard_mb, description="Target shard size in MiB.")

    def to_shard_config(self, stage: str) -> ShardConfig:
        """The one conversion from Dagster config to the pure config."""
        return ShardConfig(size=int(self.stage_sizes.get(stage, int(stage))), multiple=self.multiple,
                           max_upscale=self.max_upscale, image_format=self.image_format, quality=self.quality,
                           target_shard_mb=self.target_shard_mb)


def shard_process(_state, store: TableStore, payload: tuple) -> UnitOutput:
    """Worker body: resize one chunk of samples into its shard part; the driver's gate refusals ride along."""
    stage, rows, gate, located, config = payload
    stats = ReadStats()
    images = {r["sample_id"]: r for r in read_located(store, located, ["sample_id", "image", "licence"],
                                                          stats).to_pylist()}
    buckets = aspect_buckets(config.size, config.side_multiple(), config.max_aspect)
    out, decisions = [], list(gate)
    counts = StageCounts(total=len(gate))
    for d in gate:
        counts.dropped[d.reason] += 1
    for row in rows:
        counts.total += 1
        source = images.get(row["sample_id"])
        if source is None:  # the source drop was re-ingested without it since curation
            decisions.append(Decision(row["sample_id"], row["source_uri"], "shard", "drop", "source_missing",
                                      details={"stage": stage}))
            counts.dropped["source_missing"] += 1
            continue
        try:
            fields, reason, details = prepare(source["image"], config, buckets)
        except Exception as exc:  # corrupted storage must not take the shard down
            fields, reason, details = None, "undecodable", {"error": f"{type(exc).__name__}: {exc}"}
        if fields is None:
            decisions.append(Decision(row["sample_id"], row["source_uri"], "shard", "drop", reason,
                                      score=details.get("scale"),
                                      threshold=config.max_upscale if reason == "too_small_for_stage" else None,
                                      details={**details, "stage": stage}))
            counts.dropped[reason] += 1
            continue
        counts.kept += 1
        out.append({**row, **fields, "license": source.get("licence"), "stage": stage})
    return UnitOutput(pa.Table.from_pylist(out, schema=SHARD_SCHEMA), decisions, counts, stats.bytes)


def _eligibility(store: TableStore, stage: str, size: int) -> dict[str, tuple[bool, str | None]]:
    """source_uri -> (eligible, refusal JSON) for this stage per the exclusion filters: their `eligible_<size>` /
    `refusal_<size>` columns (the stage's pixel size), else `..._<stage key>`; images measured for neither are
    eligible."""
    out: dict[str, tuple[bool, str | None]] = {}
    for partition in store.list_partitions(EXCLUSION):
        directory = store.dir(EXCLUSION, partition)
        parts = store.list_parts(directory)
        if not parts:
            continue
        names = store.read_part(parts[0]).schema.names
        key = next((k for k in (size, stage) if f"eligible_{k}" in names), None)
        if key is not None:
            columns = ["source_uri", f"eligible_{key}", *([f"refusal_{key}"] if f"refusal_{key}" in names else [])]
            table = store.read_table(directory, columns=columns)
            refusals = (table.column(f"refusal_{key}").to_pylist() if f"refusal_{key}" in table.column_names
                        else [None] * table.num_rows)
            out.update(zip(table.column("source_uri").to_pylist(),
                           zip(table.column(f"eligible_{key}").to_pylist(), refusals, strict=True), strict=True))
    return out


@dg.asset(
    partitions_def=curriculum_stages,
    deps=[rebalanced_images, prompt_variants],
    code_version=SHARD_CODE_VERSION,
    kinds={"ray", "parquet"},
    group_name="training",
    check_specs=[
        dg.AssetCheckSpec("accounting", asset=ASSET,
                          description="every curated sample is in a shard or has a shard-stage decision"),
        dg.AssetCheckSpec("nothing_dropped_in_shards", asset=ASSET,
                          description="no sample that any stage dropped (or that opted out) is in a shard"),
        dg.AssetCheckSpec("bucket_shapes", asset=ASSET, description="every image has its bucket's size"),
    ],
)
def training_shards(context: dg.AssetExecutionContext, config: TrainingShardsConfig, storage: StorageResource,
                    ray_cluster: RayResource) -> dg.MaterializeResult:
    """Eligible kept samples of one curriculum stage, bucketed by aspect ratio, with prompt variants and provenance."""
    store = storage.store()
    stage = context.partition_key
    with store.lock(f"{ASSET}-{stage}", owner=context.run.run_id):
        return _build(context, config.to_shard_config(stage), store, stage)


def _build(context, shard_config: ShardConfig, store: TableStore, stage: str) -> dg.MaterializeResult:
    run_id = context.run.run_id
    curated = store.read_table(store.dir(REBALANCED))
    if curated.num_rows == 0 and not store.exists(f"{store.dir(REBALANCED)}/{SUCCESS_MARKER}"):
        raise RuntimeError("materialize rebalanced_images (and its upstream assets) before training_shards")
    kept = curated.filter(curated.column("kept")).to_pylist()
    variants = {r["sample_id"]: r for r in current_rows(store, VARIANTS, [r["sample_id"] for r in kept]).to_pylist()}
    eligible = _eligibility(store, stage, shard_config.size)
    opt_outs = load_opt_outs(store)
    source_of = {r["sample_id"]: r["source"] for r in kept}
    locator = source_locator(store, source_of.values(), source_of)
    metadata_of = {}
    if opt_outs:  # artists and URLs live in the ingest metadata
        metadata_of = {sid: r["metadata"] for sid, r in read_source_rows(store, source_of, ["metadata"]).items()}
    gate: list[Decision] = []
    rows = []
    by_id = {r["sample_id"]: r for r in kept}
    # source order: each shard's unit then reads few row groups of source_images
    order = locator.order(by_id) + sorted(s for s in by_id if s not in locator)
    for sid in order:
        r = by_id[sid]
        request = opt_outs.match(r["sample_id"], r["source_uri"], metadata_of.get(r["sample_id"]))
        variant = variants.get(r["sample_id"])
        if request is not None:  # re-applied here too: a request made after rebalancing still wins
            gate.append(opt_out_decision(r["sample_id"], r["source_uri"], request))
        elif not eligible.get(r["source_uri"], (True, None))[0]:
            gate.append(ineligible_decision(r["sample_id"], r["source_uri"], stage, eligible[r["source_uri"]][1]))
        elif variant is None or not (variant.get("long") or variant.get("medium")):  # no distinct long: medium
            gate.append(Decision(r["sample_id"], r["source_uri"], "shard", "drop", "no_caption",
                                 details={"stage": stage}))
        else:
            rows.append({"sample_id": r["sample_id"], "source_uri": r["source_uri"],
                         "sample_weight": float(r["sample_weight"]),
                         "caption_backend": variant.get("caption_backend"),
                         **{f"caption_{k}": variant.get(k) or "" for k in VARIANT_KINDS}})
    per_shard = shard_config.rows_per_shard()
    chunks = [rows[i:i + per_shard] for i in range(0, len(rows), per_shard)] or [[]]
    gates = [gate[k::len(chunks)] for k in range(len(chunks))]  # refusals spread over the units, all ledgered
    chash = stage_hash({"config": asdict(shard_config), "code": SHARD_CODE_VERSION})
    units = [Unit(index, (stage, chunk, part_gate, locator.group(r["sample_id"] for r in chunk), shard_config),
                  stage_hash([chunk, [asdict(d) for d in part_gate]]),
                  len(chunk) + len(part_gate))
             for index, (chunk, part_gate) in enumerate(zip(chunks, gates, strict=True))]
    runner_stage = PartStage(ASSET, stage, SHARD_CODE_VERSION, chash, setup=_no_state, process=shard_process,
                             row_group_size=64, write_marker=False, resources=StageResources(num_cpus=1.0))
    report = run_stage(store, runner_stage, units, run_id, context.log)
    counts = report.counts
    data_dir = store.dir(ASSET, stage)
    shards = store.read_table(data_dir, columns=["sample_id", "source_uri", "bucket", "width", "height"],
                              schema=SHARD_SCHEMA)
    checks = verify(store, stage, len(kept), counts, shards)
    checks[0] = dg.AssetCheckResult(check_name="accounting", passed=checks[0].passed and report.accounting_passed,
                                    metadata={**checks[0].metadata, **report.accounting})
    by_bucket = {}
    if shards.num_rows:
        for item in pc.value_counts(shards.column("bucket")).to_pylist():
            by_bucket[item["values"]] = item["counts"]
    sizes = [store.fs.get_file_info(p).size for p in store.list_parts(data_dir)]
    card = {"stage": stage, "size": shard_config.size, "config_hash": chash, "code_version": SHARD_CODE_VERSION,
            "run_id": run_id, "shards": len(chunks), "rows": shards.num_rows, "buckets": by_bucket,
            "counts": counts.to_dict(), "shard_bytes": sizes, "accounting_passed": report.accounting_passed}
    store.write_json(f"{data_dir}/{SUCCESS_MARKER}", card)
    table_md = "\n".join(f"| {b} | {n} |" for b, n in sorted(by_bucket.items(), key=lambda kv: -kv[1]))
    metadata = {**report.metadata(store), "dagster/row_count": shards.num_rows, "size": shard_config.size,
                "shards": len(chunks), "mean_shard_mb": round(sum(sizes) / max(1, len(sizes)) / 2**20, 3),
                "buckets": dg.MetadataValue.md(f"| bucket | rows |\n| --- | --- |\n{table_md}" if by_bucket else "-")}
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


def _no_state():
    return None


def forbidden_pairs(store: TableStore, stage: str) -> tuple[set[tuple[str, str]], set[str]]:
    """What may not be in this stage's shards: (sample_id, source_uri) of every drop anywhere except other stages'
    shard refusals, and every sample id that opted out."""
    ledger = store.read_decisions(filter=None)
    pairs, opted = set(), set()
    for d in ledger.select(["sample_id", "source_uri", "stage", "decision", "details"]).to_pylist():
        if d["decision"] != "drop" or d["sample_id"] is None:
            continue
        if d["stage"] == "shard" and json.loads(d["details"] or "{}").get("stage") != stage:
            continue
        if d["stage"] == "opt_out":
            opted.add(d["sample_id"])
        pairs.add((d["sample_id"], d["source_uri"]))
    return pairs, opted


def verify(store: TableStore, stage: str, curated: int, counts: StageCounts,
           shards: pa.Table) -> list[dg.AssetCheckResult]:
    pairs, opted = forbidden_pairs(store, stage)
    present = list(zip(shards.column("sample_id").to_pylist(), shards.column("source_uri").to_pylist(), strict=True))
    leaked = [p for p in present if p in pairs or p[0] in opted]
    wrong_shape = 0
    for bucket, w, h in zip(shards.column("bucket").to_pylist(), shards.column("width").to_pylist(),
                            shards.column("height").to_pylist(), strict=True):
        wrong_shape += bucket != f"{w}x{h}"
    parts = store.list_parts(store.dir(ASSET, stage))
    if parts:  # the stored pixels themselves, on a sample of the first shard (headers only)
        first = store.read_part(parts[0], ["image", "width", "height"]).slice(0, 64).to_pylist()
        wrong_shape += sum(Image.open(io.BytesIO(r["image"])).size != (r["width"], r["height"]) for r in first)
    ids = [p[0] for p in present]
    return [
        dg.AssetCheckResult(check_name="accounting", passed=counts.balanced() and counts.total == curated
                            and counts.kept == shards.num_rows and len(ids) == len(set(ids)),
                            metadata={"curated": curated, "in_shards": shards.num_rows, "refused": counts.n_dropped}),
        dg.AssetCheckResult(check_name="nothing_dropped_in_shards", passed=not leaked,
                            metadata={"leaked": len(leaked), "examples": json.dumps(leaked[:5])}),
        dg.AssetCheckResult(check_name="bucket_shapes", passed=wrong_shape == 0, metadata={"wrong": wrong_shape}),
    ]
