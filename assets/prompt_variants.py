"""`prompt_variants` (tags / short / medium / long of every caption) and `prompt_expansion_pairs` (short -> long)."""

import json
import os
from dataclasses import asdict
from functools import partial

import dagster as dg
import pyarrow as pa
from dagster_ray import RayResource
from pydantic import Field

from assets.captions import ASSET as CAPTIONS
from assets.captions import captions
from captioning.checks import check_variant_rows
from captioning.report import variants_table_markdown
from captioning.variants import VARIANT_KINDS, VariantConfig, check_variant, expansion_pairs, rewrite_batch
from curation.decisions import Decision, StageCounts
from curation.stage import StageResources
from orchestration.reads import ReadStats, read_located
from orchestration.resources import ModelSettings, StorageResource
from orchestration.sample_parts import (
    asset_locator,
    curated_samples,
    current_rows,
    plan_sample_parts,
    read_source_rows,
    sample_units,
)
from orchestration.stage_runner import PartStage, UnitOutput, run_stage, setup_model
from orchestration.stage_runner import config_hash as stage_hash
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "prompt_variants"
VARIANTS_CODE_VERSION = "variants-4"

VARIANTS_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    *[pa.field(k, pa.string(), nullable=False) for k in VARIANT_KINDS],
    pa.field("backend", pa.string(), nullable=False),
    pa.field("model", pa.string(), nullable=False),
    pa.field("prompt_version", pa.string(), nullable=False),
    pa.field("fallback_reason", pa.string()),
    pa.field("long_is_distinct", pa.bool_(), nullable=False),  # False: `long` is '' rather than a copy of medium
    pa.field("long_note", pa.string()),
    pa.field("medium_note", pa.string()),  # why medium is under its bounds (the caption's facts), else null
    pa.field("caption_backend", pa.string(), nullable=False),
    pa.field("quoted", pa.list_(pa.string()), nullable=False),
    pa.field("entities", pa.list_(pa.string()), nullable=False),
])


class PromptVariantsConfig(dg.Config):
    """Rewriting backend, length bounds and the distribution the training loader samples."""

    backend: str = Field(default="deterministic", description="'deterministic', 'transformers' or 'openai'.")
    model_path: str | None = Field(default=None, description="transformers: local text model directory.")
    endpoint: str | None = Field(default=None, description="openai: base URL of the chat-completions endpoint.")
    model: str | None = Field(default=None, description="openai: served model name.")
    api_key_env: str | None = Field(default=None, description="openai: NAME of the env var holding the API key.")
    short_max_words: int = Field(default=VariantConfig.short_max_words, description="Word limit of `short`.")
    medium_target_words: int = Field(default=VariantConfig.medium_target_words, description="Aim of `medium`.")
    length_distribution: dict[str, float] = Field(
        default={"tags": 0.1, "short": 0.3, "medium": 0.3, "long": 0.3},
        description="Probability the training loader picks each variant.")
    rows_per_part: int = Field(default=256, description="Captions per part (one actor task).")
    num_gpus_per_actor: float = Field(default=0.0, description="GPUs per rewriting actor (transformers).")
    max_new_tokens: int = Field(default=96, description="transformers: generation budget per rewrite.")
    batch_size: int = Field(default=8, description="transformers: prompts per generate call.")

    def to_variant_config(self, models: ModelSettings) -> VariantConfig:
        """The one conversion from Dagster config to the pure config."""
        path = models.resolve(self.model_path) if self.backend == "transformers" else self.model
        return VariantConfig(backend=self.backend, model_path=path, short_max_words=self.short_max_words,
                             medium_target_words=self.medium_target_words,
                             length_distribution=dict(self.length_distribution),
                             device=models.device_for("auto", self.num_gpus_per_actor))


class Rewriter:
    """Loaded once per actor: the LLM generator for the configured backend (none for the deterministic one)."""

    def __init__(self, config: tuple) -> None:
        self.config, self.endpoint, self.api_key_env, self.generation = config
        self.generator = None

    def setup(self) -> None:
        if self.config.backend == "openai":
            from captioning.openai_client import ChatClient
            from captioning.variants import chat_generator

            if not self.endpoint or not self.config.model_path:
                raise ValueError("prompt_variants backend 'openai' needs `endpoint` and `model`")
            client = ChatClient(self.endpoint, model=self.config.model_path, api_key_env=self.api_key_env)
            self.generator = chat_generator(client.complete)
        elif self.config.backend == "transformers":
            from captioning.variants import TransformersTextGenerator

            self.generator = TransformersTextGenerator(self.config.model_path, device=self.config.device,
                                                       **self.generation)
            self.generator.setup()


def _load_rewriter(config: tuple) -> Rewriter:
    return Rewriter(config)


def variants_process(rewriter: Rewriter, store: TableStore, payload: tuple) -> UnitOutput:
    """Worker body: rewrite one unit of captions into their four variants."""
    wanted, located = payload
    stats = ReadStats()
    captions_of = {r["sample_id"]: r for r in read_located(store, located, ["sample_id", "caption", "quoted",
                                                                            "entities", "backend"], stats).to_pylist()}
    rows, decisions = [], []
    counts = StageCounts()
    for sid, uri in wanted:
        counts.total += 1
        row = captions_of.get(sid)
        if row is None or not row["caption"]:  # its caption was retired since planning
            counts.dropped["no_caption"] += 1
            decisions.append(Decision(sid, uri, "variants", "drop", "no_caption"))
        else:
            counts.kept += 1
            rows.append(row)
    items = [{"caption": r["caption"], "quoted": r["quoted"], "entities": r["entities"]} for r in rows]
    results = rewrite_batch(items, rewriter.config, rewriter.generator) if items else []
    out = [{"sample_id": r["sample_id"], **{k: getattr(v, k) for k in VARIANT_KINDS}, "backend": v.backend,
            "model": v.model, "prompt_version": v.prompt_version, "fallback_reason": v.fallback_reason,
            "long_is_distinct": v.long_is_distinct, "long_note": v.long_note, "medium_note": v.medium_note,
            "caption_backend": r["backend"], "quoted": r["quoted"], "entities": r["entities"]}
           for r, v in zip(rows, results, strict=True)]
    return UnitOutput(pa.Table.from_pylist(out, schema=VARIANTS_SCHEMA), decisions, counts, stats.bytes)


@dg.asset(
    deps=[captions],
    code_version=VARIANTS_CODE_VERSION,
    kinds={"ray", "parquet"},
    group_name="captioning",
    check_specs=[
        dg.AssetCheckSpec("coverage", asset=ASSET, description="every caption has its four variants"),
        dg.AssetCheckSpec("length_bounds", asset=ASSET, description="short/medium/tags within their word bounds"),
        dg.AssetCheckSpec("quoted_text_kept", asset=ASSET,
                          description="every variant keeps the caption's quoted text and key entities"),
    ],
)
def prompt_variants(context: dg.AssetExecutionContext, config: PromptVariantsConfig, storage: StorageResource,
                    models: ModelSettings, ray_cluster: RayResource) -> dg.MaterializeResult:
    """Each caption rewritten as tags, short (<= 12 words), medium (~30 words) and long."""
    store = storage.store()
    variant_config = config.to_variant_config(models)
    captions_marker = store.read_json(f"{store.dir(CAPTIONS)}/{SUCCESS_MARKER}") or {}
    chash = stage_hash({"config": asdict(variant_config), "endpoint": config.endpoint,
                        "code": VARIANTS_CODE_VERSION, "captions": captions_marker.get("config_hash"),
                        **({"generation": [config.max_new_tokens]} if config.backend == "transformers" else {})})
    with store.lock(ASSET, owner=context.run.run_id):
        curated = curated_samples(store)
        captioned = [r["sample_id"] for r in current_rows(store, CAPTIONS, curated.ids,
                                                          ["sample_id", "caption"]).to_pylist() if r["caption"]]
        locator = asset_locator(store, CAPTIONS, captioned)
        done, plans, retired = plan_sample_parts(store, ASSET, chash, captioned, config.rows_per_part, locator)
        stage = PartStage(ASSET, None, VARIANTS_CODE_VERSION, chash, append=True, process=variants_process,
                          setup=partial(setup_model, _load_rewriter,
                                        (variant_config, config.endpoint, config.api_key_env,
                                         {"max_new_tokens": config.max_new_tokens, "batch_size": config.batch_size})),
                          resources=StageResources(num_cpus=1.0, num_gpus=config.num_gpus_per_actor))
        report = run_stage(store, stage, sample_units(plans, curated, locator, chash), context.run.run_id,
                           context.log)
        rows = current_rows(store, ASSET, captioned)
    records = rows.to_pylist()
    bound_problems, kept_problems, fallbacks = [], [], 0
    for r in records:
        fallbacks += r["fallback_reason"] is not None
        for kind in VARIANT_KINDS:
            if kind == "long" and not r["long_is_distinct"]:
                continue  # no copy of medium was written; `variant_quality` checks the flag
            problems = check_variant(kind, r[kind], r["quoted"], r["entities"], variant_config,
                                     caption=r["long"] or r["medium"])
            (kept_problems if any("quote" in p or "entit" in p for p in problems) else bound_problems).extend(
                f"{r['sample_id'][:12]} {kind}: {p}" for p in problems)
    store.write_json(f"{store.dir(ASSET)}/{SUCCESS_MARKER}", {
        "config_hash": chash, "code_version": VARIANTS_CODE_VERSION, "run_id": context.run.run_id,
        "rows": rows.num_rows, "length_distribution": variant_config.length_distribution,
        "bounds": {"short_max_words": variant_config.short_max_words,
                   "medium_target_words": variant_config.medium_target_words}})
    words = {k: round(sum(len(r[k].split()) for r in records) / max(1, len(records)), 1) for k in VARIANT_KINDS}
    shown = records[:12]
    images = {sid: r["image"] for sid, r in read_source_rows(
        store, {r["sample_id"]: curated.source[r["sample_id"]] for r in shown if r["sample_id"] in curated.source},
        ["image"]).items()}
    table = variants_table_markdown(shown, images)
    metadata = {**report.metadata(store), "total": len(captioned), "kept": rows.num_rows,
                "dropped": len(captioned) - rows.num_rows, "reused": len(done & set(captioned)),
                "parts_retired": retired, "llm_fallbacks": fallbacks, "backend": variant_config.backend,
                **{f"mean_words_{k}": v for k, v in words.items()},
                "length_distribution": dg.MetadataValue.json(variant_config.length_distribution),
                "examples": dg.MetadataValue.md(table or "-"),
                "long_not_distinct": sum(not r["long_is_distinct"] for r in records),
                "medium_under_bounds": sum(r["medium_note"] is not None for r in records),
                "dagster/row_count": rows.num_rows}
    checks = [
        dg.AssetCheckResult(check_name="coverage", passed=rows.num_rows == len(captioned)
                            and report.accounting_passed,
                            metadata={"captions": len(captioned), "rows": rows.num_rows,
                                      **{f"this_run_{k}": v for k, v in report.accounting.items()}}),
        dg.AssetCheckResult(check_name="length_bounds", passed=not bound_problems,
                            metadata={"problems": len(bound_problems), "examples": json.dumps(bound_problems[:5])}),
        dg.AssetCheckResult(check_name="quoted_text_kept", passed=not kept_problems,
                            metadata={"problems": len(kept_problems), "examples": json.dumps(kept_problems[:5])}),
    ]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)


@dg.asset(
    deps=[prompt_variants],
    code_version=VARIANTS_CODE_VERSION,
    kinds={"parquet"},
    group_name="captioning",
    check_specs=[dg.AssetCheckSpec("pairs_differ", asset="prompt_expansion_pairs",
                                   description="no pair's short prompt equals its long caption")],
)
def prompt_expansion_pairs(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    """(short -> long) pairs of every curated caption: the training data of a prompt expander."""
    store = storage.store()
    wanted = curated_samples(store).ids
    rows = current_rows(store, ASSET, wanted, ["sample_id", "short", "medium", "long"]).to_pylist()
    pairs = expansion_pairs(rows)
    table = pa.Table.from_pylist(pairs, schema=pa.schema([("short", pa.string()), ("long", pa.string()),
                                                          ("sample_id", pa.string())]))
    directory = store.dir("prompt_expansion_pairs")
    store.write_parquet(store.part_path("prompt_expansion_pairs", None, 0), table, {"run_id": context.run.run_id})
    store.remove_parts_from(directory, 1)
    same = sum(p["short"].strip().lower() == p["long"].strip().lower() for p in pairs)
    jsonl = os.linesep.join(json.dumps(p, ensure_ascii=False) for p in pairs[:3])
    return dg.MaterializeResult(
        metadata={"pairs": len(pairs), "skipped": len(rows) - len(pairs), "dagster/row_count": len(pairs),
                  "examples": dg.MetadataValue.md(f"```\n{jsonl}\n```" if jsonl else "-"),
                  "path": dg.MetadataValue.path(store.uri(directory))},
        check_results=[dg.AssetCheckResult(check_name="pairs_differ", passed=same == 0, metadata={"same": same})])


@dg.asset_check(asset=prompt_variants, description="no field labels or file stems, no identical variants (caption "
                "with >= 3 facts), lengths in bounds, quoted text and entities kept, tags are not sentences")
def variant_quality(storage: StorageResource) -> dg.AssetCheckResult:
    """Thin wrapper: the rules are `captioning.checks.variant_problems`."""
    store = storage.store()
    marker = store.read_json(f"{store.dir(ASSET)}/{SUCCESS_MARKER}") or {}
    wanted = curated_samples(store).ids
    passed, meta = check_variant_rows(current_rows(store, ASSET, wanted).to_pylist(),
                                      VariantConfig(**marker.get("bounds", {})))
    return dg.AssetCheckResult(passed=passed, metadata=meta)
