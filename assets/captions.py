"""`captions`: OCR first, then metadata, then a captioner's world knowledge, for every curated image."""

import json
from dataclasses import asdict
from functools import partial

import dagster as dg
import pyarrow as pa
from dagster_ray import RayResource
from pydantic import Field

from assets.ocr_annotations import ASSET as OCR
from assets.ocr_annotations import ocr_annotations
from captioning.captioner import CaptionerConfig, CaptionInput, load_captioner
from captioning.checks import check_caption_rows
from captioning.grounding import missing_ocr_lines
from curation.decisions import Decision, StageCounts
from curation.image_io import load_rgb
from curation.stage import StageResources
from orchestration.reads import ReadStats, read_located
from orchestration.resources import ModelSettings, StorageResource
from orchestration.sample_parts import (
    asset_locator,
    curated_samples,
    current_rows,
    plan_sample_parts,
    sample_units,
    source_locator,
)
from orchestration.stage_runner import PartStage, Unit, UnitOutput, run_stage, setup_model
from orchestration.stage_runner import config_hash as stage_hash
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "captions"
CAPTIONS_CODE_VERSION = "captions-3"

CAPTIONS_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("caption", pa.string(), nullable=False),
    pa.field("backend", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("inputs", pa.string(), nullable=False),  # JSON: OCR lines, metadata fields and values, visual facts
    pa.field("attempts", pa.int32(), nullable=False),
    pa.field("failure", pa.string()),
    pa.field("failure_detail", pa.string()),
    pa.field("fallback_from", pa.string()),
    pa.field("quoted", pa.list_(pa.string()), nullable=False),  # visible text the variants must keep
    pa.field("entities", pa.list_(pa.string()), nullable=False),  # title, place, creator from metadata
])


class CaptionsConfig(dg.Config):
    """Captioner backend. Secrets never appear here: only the NAME of the API key's environment variable."""

    backend: str = Field(default="grounded", description="'grounded' (embedded), 'transformers' or 'openai'.")
    model_path: str | None = Field(default=None, description="transformers: local VLM directory.")
    endpoint: str | None = Field(default=None, description="openai: base URL of the chat-completions endpoint.")
    model: str | None = Field(default=None, description="openai: served model name.")
    api_key_env: str | None = Field(default=None, description="openai: NAME of the env var holding the API key.")
    max_new_tokens: int = Field(default=CaptionerConfig.max_new_tokens, description="Tokens per caption.")
    batch_size: int = Field(default=CaptionerConfig.batch_size, description="transformers: images per generate.")
    concurrency: int = Field(default=CaptionerConfig.concurrency, description="openai: requests in flight.")
    timeout_s: float = Field(default=CaptionerConfig.timeout_s, description="openai: per-request timeout.")
    max_retries: int = Field(default=CaptionerConfig.max_retries, description="openai: HTTP retries.")
    min_ocr_score: float = Field(default=CaptionerConfig.min_ocr_score,
                                 description="OCR lines below this confidence are neither used nor required.")
    fallback_to_grounded: bool = Field(default=False, description="Use the grounded caption when a VLM fails.")
    credit_in_caption: bool = Field(default=False, description="Credit the creator in the caption.")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'.")
    rows_per_part: int = Field(default=64, description="Images per part (one actor task).")
    num_cpus_per_actor: float = Field(default=1.0, description="CPUs per captioning actor.")
    num_gpus_per_actor: float = Field(default=0.0, description="GPUs per captioning actor (transformers).")

    def to_captioner_config(self, models: ModelSettings) -> CaptionerConfig:
        """The one conversion from Dagster config to the pure config."""
        return CaptionerConfig(
            backend=self.backend, model_path=models.resolve(self.model_path), endpoint=self.endpoint,
            model=self.model, api_key_env=self.api_key_env, max_new_tokens=self.max_new_tokens,
            batch_size=self.batch_size, concurrency=self.concurrency, timeout_s=self.timeout_s,
            max_retries=self.max_retries, min_ocr_score=self.min_ocr_score,
            fallback_to_grounded=self.fallback_to_grounded, credit_in_caption=self.credit_in_caption,
            device=models.device_for(self.device, self.num_gpus_per_actor))


def _entities(inputs: dict) -> list[str]:
    return [str(e) for e in inputs.get("entities") or []]  # the names the caption holds (captioning.prose)


def _failed_row(sid: str, uri: str, backend: str, failure: str, detail: str) -> dict:
    return {"sample_id": sid, "source_uri": uri, "caption": "", "backend": backend, "model": "",
            "prompt_version": "", "inputs": "{}", "attempts": 0, "failure": failure, "failure_detail": detail,
            "fallback_from": None, "quoted": [], "entities": []}


def caption_process(captioner, store: TableStore, payload: tuple) -> UnitOutput:
    """Worker body: caption one unit of curated images with the actor's captioner (OCR lines read alongside)."""
    wanted, located, located_ocr, backend = payload
    stats = ReadStats()
    images = {r["sample_id"]: r for r in read_located(store, located, ["sample_id", "source_uri", "image",
                                                                        "metadata"], stats).to_pylist()}
    ocr = {r["sample_id"]: r for r in read_located(store, located_ocr, ["sample_id", "lines"], stats).to_pylist()}
    inputs, broken = [], []
    for sid, uri in wanted:
        rec = images.get(sid)
        if rec is None:  # the source drop was re-ingested without it since curation
            broken.append((sid, uri, "source_missing", "no source_images row for this sample"))
            continue
        lines = [(line["text"], float(line["score"])) for line in (ocr.get(sid) or {}).get("lines") or []]
        try:
            inputs.append(CaptionInput(sid, load_rgb(rec["image"]), lines, json.loads(rec["metadata"]),
                                       rec["source_uri"]))
        except Exception as exc:  # corrupted storage: recorded as a failed caption, the part goes on
            broken.append((sid, rec["source_uri"], "caption_backend_error", f"{type(exc).__name__}: {exc}"))
    results = captioner.caption_batch(inputs) if inputs else []
    uri_of = {item.sample_id: item.source_uri for item in inputs}
    rows, decisions = [], []
    counts = StageCounts()
    for res in results:
        counts.total += 1
        uri = uri_of[res.sample_id]
        failure = res.failure
        if failure is None and not res.caption:
            failure = "caption_empty"
        rows.append({"sample_id": res.sample_id, "source_uri": uri, "caption": res.caption or "",
                     "backend": res.backend, "model": res.model, "prompt_version": res.prompt_version,
                     "inputs": json.dumps(res.inputs, sort_keys=True, default=str), "attempts": res.attempts,
                     "failure": failure, "failure_detail": res.failure_detail, "fallback_from": res.fallback_from,
                     "quoted": list(res.inputs.get("ocr_lines") or []), "entities": _entities(res.inputs)})
        if failure and not res.caption:
            counts.dropped[failure] += 1
            decisions.append(Decision(res.sample_id, uri, "caption", "drop", failure,
                                      details={"detail": res.failure_detail, "attempts": res.attempts,
                                               "backend": res.backend, "model": res.model}))
        else:
            counts.kept += 1
            if failure:  # a VLM failure replaced by the grounded caption: kept, and the ledger says so
                decisions.append(Decision(res.sample_id, uri, "caption", "keep", f"fallback_after_{failure}",
                                          details={"detail": res.failure_detail}))
    for sid, uri, reason, detail in broken:
        counts.total += 1
        counts.dropped[reason] += 1
        rows.append(_failed_row(sid, uri, backend, reason, detail))
        decisions.append(Decision(sid, uri, "caption", "drop", reason, details={"detail": detail}))
    return UnitOutput(pa.Table.from_pylist(rows, schema=CAPTIONS_SCHEMA), decisions, counts, stats.bytes)


@dg.asset(
    deps=[ocr_annotations],
    code_version=CAPTIONS_CODE_VERSION,
    kinds={"ray", "parquet"},
    group_name="captioning",
    check_specs=[
        dg.AssetCheckSpec("accounting", asset=ASSET,
                          description="every curated sample has a caption or a caption-stage decision"),
        dg.AssetCheckSpec("ocr_grounding", asset=ASSET,
                          description="every confident OCR line appears verbatim in its caption"),
        dg.AssetCheckSpec("provenance", asset=ASSET, description="every caption names backend, model, prompt"),
    ],
)
def captions(context: dg.AssetExecutionContext, config: CaptionsConfig, storage: StorageResource,
             models: ModelSettings, ray_cluster: RayResource) -> dg.MaterializeResult:
    """Captions built in steps (OCR, metadata, a captioner), grounded and with their provenance."""
    store = storage.store()
    captioner_config = config.to_captioner_config(models)
    safe = {k: v for k, v in asdict(captioner_config).items() if k != "api_key_env"}
    ocr_marker = store.read_json(f"{store.dir(OCR)}/{SUCCESS_MARKER}") or {}
    # captions are recomputed when the OCR that feeds them changes its configuration
    chash = stage_hash({"config": safe, "code": CAPTIONS_CODE_VERSION, "ocr": ocr_marker.get("config_hash")})
    with store.lock(ASSET, owner=context.run.run_id):
        curated = curated_samples(store)
        wanted = curated.ids
        locator = source_locator(store, curated.source.values(), wanted)
        done, plans, retired = plan_sample_parts(store, ASSET, chash, wanted, config.rows_per_part, locator)
        ocr_locator = asset_locator(store, OCR, {s for p in plans for s in p.sample_ids})
        units = [Unit(u.index, (*u.payload[:2], ocr_locator.group(s for s, _ in u.payload[0]),
                                captioner_config.backend), u.fingerprint, u.inputs)
                 for u in sample_units(plans, curated, locator, chash)]
        stage = PartStage(ASSET, None, CAPTIONS_CODE_VERSION, chash, rows_are="all", append=True,
                          setup=partial(setup_model, load_captioner, captioner_config), process=caption_process,
                          resources=StageResources(num_cpus=config.num_cpus_per_actor,
                                                   num_gpus=config.num_gpus_per_actor))
        report = run_stage(store, stage, units, context.run.run_id, context.log)
        rows = current_rows(store, ASSET, wanted)
    records = rows.to_pylist()
    failed = [r for r in records if not r["caption"]]
    ungrounded = [r["sample_id"] for r in records if r["caption"] and missing_ocr_lines(r["caption"],
                                                                                            r["quoted"])]
    no_provenance = [r["sample_id"] for r in records if r["caption"] and not (r["backend"] and r["model"]
                                                                             and r["prompt_version"])]
    reasons: dict[str, int] = {}
    for r in failed:
        reasons[r["failure"] or "caption_empty"] = reasons.get(r["failure"] or "caption_empty", 0) + 1
    store.write_json(f"{store.dir(ASSET)}/{SUCCESS_MARKER}", {"config_hash": chash, "run_id": context.run.run_id,
                                                             "code_version": CAPTIONS_CODE_VERSION,
                                                             "rows": rows.num_rows,
                                                             "credit_in_caption": config.credit_in_caption})
    examples = "\n".join(f"- `{r['sample_id'][:12]}` ({r['backend']}): {r['caption'][:300]}"
                         for r in records[:5] if r["caption"])
    metadata = {**report.metadata(store), "total": len(wanted), "kept": len(records) - len(failed),
                "dropped": len(failed), **{f"dropped_{k}": v for k, v in sorted(reasons.items())},
                "reused": len(done & set(wanted)), "parts_retired": retired, "backend": captioner_config.backend,
                "model": captioner_config.model or captioner_config.model_path or "embedded",
                "examples": dg.MetadataValue.md(examples or "-"), "dagster/row_count": len(records) - len(failed)}
    checks = [
        dg.AssetCheckResult(check_name="accounting", passed=len(records) == len(wanted) and report.accounting_passed,
                            metadata={"wanted": len(wanted), "rows": len(records), "failed": len(failed),
                                      **{f"this_run_{k}": v for k, v in report.accounting.items()}}),
        dg.AssetCheckResult(check_name="ocr_grounding", passed=not ungrounded,
                            metadata={"ungrounded": len(ungrounded), "examples": json.dumps(ungrounded[:5])}),
        dg.AssetCheckResult(check_name="provenance", passed=not no_provenance,
                            metadata={"missing": len(no_provenance)}),
    ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


@dg.asset_check(asset=captions, description="captions are prose: no field labels, file stems, class labels, "
                "placeholders or credits; visible text quoted verbatim and names kept")
def caption_text(storage: StorageResource) -> dg.AssetCheckResult:
    """Thin wrapper: the rules are `captioning.checks.caption_problems`."""
    store = storage.store()
    marker = store.read_json(f"{store.dir(ASSET)}/{SUCCESS_MARKER}") or {}
    wanted = curated_samples(store).ids
    rows = current_rows(store, ASSET, wanted, ["sample_id", "caption", "quoted", "entities"]).to_pylist()
    passed, meta = check_caption_rows(rows, credit_allowed=bool(marker.get("credit_in_caption")))
    return dg.AssetCheckResult(passed=passed, metadata=meta)
