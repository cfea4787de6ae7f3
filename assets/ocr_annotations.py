"""`ocr_annotations`: the text in every curated image (only the survivors of the filters, dedup and rebalancing)."""

import hashlib
import json
from dataclasses import asdict

import dagster as dg
import pyarrow as pa
from dagster_ray import RayResource
from pydantic import Field

from assets.rebalanced_images import ASSET as REBALANCED
from assets.rebalanced_images import rebalanced_images
from captioning.ocr import OcrConfig, load_engine
from curation.decisions import Decision, StageCounts, decisions_table
from curation.image_io import load_rgb
from curation.stage import ModelStage, StageResources
from orchestration.ray_adapter import Throughput, run_units_on_actors
from orchestration.resources import ModelSettings, StorageResource
from orchestration.sample_parts import current_rows, plan_sample_parts, read_images
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "ocr_annotations"
OCR_CODE_VERSION = "ocr-2"

LINE = pa.struct([("text", pa.string()), ("score", pa.float32()), ("box", pa.list_(pa.list_(pa.float32()))),
                  ("language", pa.string())])
OCR_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("text", pa.string(), nullable=False),
    pa.field("lines", pa.list_(LINE), nullable=False),
    pa.field("dropped_low_confidence", pa.int32(), nullable=False),
    pa.field("backend", pa.string(), nullable=False),
    pa.field("error", pa.string()),
])


class OcrAnnotationsConfig(dg.Config):
    """OCR backend and thresholds."""

    backend: str = Field(default="rapidocr", description="'rapidocr' (embedded PP-OCRv6) or 'paddleocr' (local dirs).")
    min_score: float = Field(default=OcrConfig.min_score, description="Lines below this confidence are dropped.")
    min_short_score: float = Field(default=OcrConfig.min_short_score,
                                   description="Confidence needed by readings of fewer than two letters/digits.")
    det_model_dir: str | None = Field(default=None, description="PaddleOCR detection model dir (paddleocr backend).")
    rec_model_dir: str | None = Field(default=None, description="PaddleOCR recognition model dir (paddleocr backend).")
    device: str = Field(default="auto", description="'auto', 'cpu' or 'cuda'.")
    rows_per_part: int = Field(default=64, description="Images per part (one actor task).")
    num_cpus_per_actor: float = Field(default=1.0, description="CPUs per OCR actor.")
    num_gpus_per_actor: float = Field(default=0.0, description="GPUs per OCR actor (PaddleOCR on GPU).")

    def to_ocr_config(self, models: ModelSettings) -> OcrConfig:
        """The one conversion from Dagster config to the pure config."""
        return OcrConfig(backend=self.backend, min_score=self.min_score, min_short_score=self.min_short_score,
                         det_model_dir=models.resolve(self.det_model_dir),
                         rec_model_dir=models.resolve(self.rec_model_dir),
                         device=models.device_for(self.device, self.num_gpus_per_actor),
                         threads=max(1, int(self.num_cpus_per_actor)))


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def ocr_part(stage: ModelStage, task: tuple) -> dict:
    """Actor task body: OCR one part of images with the actor's engine."""
    store, index, refs, config_hash, backend, run_id = task
    images = read_images(store, refs, columns=("sample_id", "source_uri", "image")).to_pylist()
    rows, decisions = [], []
    counts = StageCounts()
    for rec in images:
        counts.total += 1
        counts.kept += 1  # OCR never removes a sample; a failure is noted and the caption goes on without text
        try:
            result = stage.model.read(load_rgb(rec["image"]))
            payload = result.to_json()
            rows.append({"sample_id": rec["sample_id"], "source_uri": rec["source_uri"], "text": payload["text"],
                         "lines": payload["lines"], "dropped_low_confidence": result.dropped_low_confidence,
                         "backend": backend, "error": None})
            counts.notes["with_text"] += bool(payload["text"])
        except Exception as exc:  # one image that breaks the engine must not take the part down
            error = f"{type(exc).__name__}: {exc}"
            rows.append({"sample_id": rec["sample_id"], "source_uri": rec["source_uri"], "text": "", "lines": [],
                         "dropped_low_confidence": 0, "backend": backend, "error": error})
            decisions.append(Decision(rec["sample_id"], rec["source_uri"], "ocr", "keep", "ocr_failed",
                                      details={"error": error}))
            counts.notes["ocr_failed"] += 1
    summary = {"unit": index, "config_hash": config_hash, "run_id": run_id, "counts": counts.to_dict()}
    store.write_parquet(store.part_path("decisions/" + ASSET, None, index),
                        decisions_table(decisions, run_id, OCR_CODE_VERSION), summary)
    store.write_parquet(store.part_path(ASSET, None, index), pa.Table.from_pylist(rows, schema=OCR_SCHEMA), summary)
    return summary


def curated_refs(store: TableStore) -> tuple[list[str], dict[str, str]]:
    """Kept sample ids after rebalancing (sorted) and the source drop of each."""
    table = store.read_table(store.dir(REBALANCED), columns=["sample_id", "source", "kept"])
    if table.num_rows == 0 and not store.exists(f"{store.dir(REBALANCED)}/{SUCCESS_MARKER}"):
        raise RuntimeError("materialize rebalanced_images (and its upstream assets) first")
    kept = table.filter(table.column("kept")).to_pylist()
    source = {r["sample_id"]: r["source"] for r in kept}
    return sorted(source), source


def group_by_source(ids: list[str], source: dict[str, str]) -> dict[str, list[str]]:
    refs: dict[str, list[str]] = {}
    for sid in ids:
        refs.setdefault(source[sid], []).append(sid)
    return refs


@dg.asset(
    deps=[rebalanced_images],
    code_version=OCR_CODE_VERSION,
    kinds={"ray", "parquet"},
    group_name="captioning",
    check_specs=[dg.AssetCheckSpec("coverage", asset=ASSET, description="every curated sample has one OCR row"),
                 dg.AssetCheckSpec("confidence", asset=ASSET,
                                   description="no kept line below the confidence threshold")],
)
def ocr_annotations(context: dg.AssetExecutionContext, config: OcrAnnotationsConfig, storage: StorageResource,
                    models: ModelSettings, ray_cluster: RayResource) -> dg.MaterializeResult:
    """Full text in reading order and lines with box, score and language, for every curated image."""
    store = storage.store()
    ocr_config = config.to_ocr_config(models)
    chash = _hash({"config": asdict(ocr_config), "code": OCR_CODE_VERSION})
    with store.lock(ASSET, owner=context.run.run_id):
        wanted, source = curated_refs(store)
        done, plans, retired = plan_sample_parts(store, ASSET, chash, wanted, config.rows_per_part)
        stage = ModelStage(ASSET, load_engine, ocr_config,
                           StageResources(num_cpus=config.num_cpus_per_actor, num_gpus=config.num_gpus_per_actor))
        tasks = [(store, p.index, group_by_source(p.sample_ids, source), chash, ocr_config.backend,
                  context.run.run_id) for p in plans]
        clock = Throughput()
        computed = sum(s["counts"]["total"] for s in run_units_on_actors(stage, ocr_part, tasks))
        rate = clock.per_second(computed)
        rows = current_rows(store, ASSET, wanted, columns=["sample_id", "text", "lines", "error"])
    with_text = sum(bool(t) for t in rows.column("text").to_pylist()) if rows.num_rows else 0
    low = sum(1 for lines in (rows.column("lines").to_pylist() if rows.num_rows else [])
              for line in lines if line["score"] < ocr_config.min_score)
    failed = sum(e is not None for e in rows.column("error").to_pylist()) if rows.num_rows else 0
    store.write_json(f"{store.dir(ASSET)}/{SUCCESS_MARKER}", {"config_hash": chash, "run_id": context.run.run_id,
                                                             "rows": rows.num_rows, "computed": computed})
    metadata = {"total": len(wanted), "kept": rows.num_rows, "dropped": 0, "computed_now": computed,
                "reused": len(done & set(wanted)), "parts_retired": retired, "with_text": with_text,
                "ocr_failed": failed, "images_per_second": round(rate, 3), "backend": ocr_config.backend,
                "min_score": ocr_config.min_score, "dagster/row_count": rows.num_rows,
                "path": dg.MetadataValue.path(store.uri(store.dir(ASSET)))}
    checks = [dg.AssetCheckResult(check_name="coverage", passed=rows.num_rows == len(wanted),
                                  metadata={"wanted": len(wanted), "rows": rows.num_rows}),
              dg.AssetCheckResult(check_name="confidence", passed=low == 0, metadata={"lines_below": low})]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)
