"""`ocr_annotations`: the text in every curated image (only the survivors of the filters, dedup and rebalancing)."""

from dataclasses import asdict
from functools import partial

import dagster as dg
import pyarrow as pa
from dagster_ray import RayResource
from pydantic import Field

from assets.exclusion_signals import ASSET as EXCLUSION
from assets.rebalanced_images import rebalanced_images
from captioning.ocr import OcrConfig, detection_key, load_engine
from curation.decisions import Decision, StageCounts
from curation.image_io import load_rgb
from curation.stage import StageResources
from orchestration.reads import ReadStats, SampleLocator, read_located
from orchestration.resources import ModelSettings, StorageResource
from orchestration.sample_parts import curated_samples, current_rows, plan_sample_parts, sample_units, source_locator
from orchestration.stage_runner import PartStage, Unit, UnitOutput, run_stage, setup_model
from orchestration.stage_runner import config_hash as stage_hash
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


def ocr_process(engine, store: TableStore, payload: tuple) -> UnitOutput:
    """Worker body: OCR one unit of curated images with the actor's engine."""
    wanted, located, backend, located_boxes = payload
    stats = ReadStats()
    images = {r["sample_id"]: r for r in read_located(store, located, ["sample_id", "source_uri", "image"],
                                                          stats).to_pylist()}
    key = detection_key(engine.config)
    boxes = {}  # the exclusion stage's detection, when it ran with this engine's detection settings
    if key is not None and located_boxes:
        for r in read_located(store, located_boxes, ["sample_id", "text_boxes", "text_detection"], stats).to_pylist():
            if r["text_detection"] == key and r["text_boxes"] is not None:
                boxes.setdefault(r["sample_id"], r["text_boxes"])
    rows, decisions = [], []
    counts = StageCounts()
    for sid, uri in wanted:
        counts.total += 1
        rec = images.get(sid)
        if rec is None:  # the source drop was re-ingested without it since curation
            decisions.append(Decision(sid, uri, "ocr", "drop", "source_missing"))
            counts.dropped["source_missing"] += 1
            continue
        counts.kept += 1  # OCR never removes a sample; a failure is noted and the caption goes on without text
        try:
            found = boxes.get(sid)
            result = engine.read(load_rgb(rec["image"]), boxes=found) if found is not None else \
                engine.read(load_rgb(rec["image"]))
            counts.notes["detection_reused"] += found is not None
            payload_json = result.to_json()
            rows.append({"sample_id": sid, "source_uri": rec["source_uri"], "text": payload_json["text"],
                         "lines": payload_json["lines"], "dropped_low_confidence": result.dropped_low_confidence,
                         "backend": backend, "error": None})
            counts.notes["with_text"] += bool(payload_json["text"])
        except Exception as exc:  # one image that breaks the engine must not take the part down
            error = f"{type(exc).__name__}: {exc}"
            rows.append({"sample_id": sid, "source_uri": rec["source_uri"], "text": "", "lines": [],
                         "dropped_low_confidence": 0, "backend": backend, "error": error})
            decisions.append(Decision(sid, rec["source_uri"], "ocr", "keep", "ocr_failed",
                                      details={"error": error}))
            counts.notes["ocr_failed"] += 1
    return UnitOutput(pa.Table.from_pylist(rows, schema=OCR_SCHEMA), decisions, counts, stats.bytes)


@dg.asset(
    deps=[rebalanced_images],
    code_version=OCR_CODE_VERSION,
    kinds={"ray", "parquet"},
    group_name="captioning",
    check_specs=[dg.AssetCheckSpec("accounting", asset=ASSET,
                                   description="this run's units: planned samples = OCR rows + drops"),
                 dg.AssetCheckSpec("coverage", asset=ASSET, description="every curated sample has one OCR row"),
                 dg.AssetCheckSpec("confidence", asset=ASSET,
                                   description="no kept line below the confidence threshold")],
)
def ocr_annotations(context: dg.AssetExecutionContext, config: OcrAnnotationsConfig, storage: StorageResource,
                    models: ModelSettings, ray_cluster: RayResource) -> dg.MaterializeResult:
    """Full text in reading order and lines with box, score and language, for every curated image."""
    store = storage.store()
    ocr_config = config.to_ocr_config(models)
    chash = stage_hash({"config": asdict(ocr_config), "code": OCR_CODE_VERSION})
    with store.lock(ASSET, owner=context.run.run_id):
        curated = curated_samples(store)
        locator = source_locator(store, curated.source.values(), curated.ids)
        done, plans, retired = plan_sample_parts(store, ASSET, chash, curated.ids, config.rows_per_part, locator)
        stage = PartStage(ASSET, None, OCR_CODE_VERSION, chash, setup=partial(setup_model, load_engine, ocr_config),
                          process=ocr_process, append=True,
                          resources=StageResources(num_cpus=config.num_cpus_per_actor,
                                                   num_gpus=config.num_gpus_per_actor))
        box_locator = SampleLocator.build(store, [store.dir(EXCLUSION, p) for p in sorted(set(
            curated.source.values()))], {s for p in plans for s in p.sample_ids})
        units = [Unit(u.index, (*u.payload, ocr_config.backend, box_locator.group(s for s, _ in u.payload[0])),
                      u.fingerprint, u.inputs) for u in sample_units(plans, curated, locator, chash)]
        report = run_stage(store, stage, units, context.run.run_id, context.log)
        wanted = curated.ids
        computed = report.computed_inputs
        rows = current_rows(store, ASSET, wanted, columns=["sample_id", "text", "lines", "error"])
    with_text = sum(bool(t) for t in rows.column("text").to_pylist()) if rows.num_rows else 0
    low = sum(1 for lines in (rows.column("lines").to_pylist() if rows.num_rows else [])
              for line in lines if line["score"] < ocr_config.min_score)
    failed = sum(e is not None for e in rows.column("error").to_pylist()) if rows.num_rows else 0
    store.write_json(f"{store.dir(ASSET)}/{SUCCESS_MARKER}", {"config_hash": chash, "run_id": context.run.run_id,
                                                             "rows": rows.num_rows, "computed": computed})
    metadata = {**report.metadata(store), "total": len(wanted), "kept": rows.num_rows,
                "dropped": len(wanted) - rows.num_rows, "reused": len(done & set(wanted)), "parts_retired": retired,
                "with_text": with_text, "ocr_failed": failed, "backend": ocr_config.backend,
                "min_score": ocr_config.min_score, "dagster/row_count": rows.num_rows}
    checks = [report.accounting_check(),
              dg.AssetCheckResult(check_name="coverage", passed=rows.num_rows == len(wanted),
                                  metadata={"wanted": len(wanted), "rows": rows.num_rows}),
              dg.AssetCheckResult(check_name="confidence", passed=low == 0, metadata={"lines_below": low})]
    return dg.MaterializeResult(metadata=metadata, check_results=checks)
