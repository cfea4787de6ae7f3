"""`curate inspect` and `curate ocr`: one JSON line per input, no storage involved."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def cmd_inspect(args: argparse.Namespace) -> int:
    from curation.image_io import ImageRejected, ProbeLimits, probe_image
    from curation.ingest import check_tdm, sha256_hex
    from curation.sources import RawItem, ReadLimits, plan_units, read_unit
    from curation.tdm import TdmPolicy

    limits = ProbeLimits(min_side=args.min_side)
    extractor = None
    if not args.no_features:
        from curation.features import FeatureConfig, FeatureExtractor

        extractor = FeatureExtractor(FeatureConfig())
    failed = 0
    for path in args.paths:
        items: list[RawItem]
        try:
            items = [item for unit in plan_units(path, ReadLimits()) for item in read_unit(unit)]
        except FileNotFoundError as exc:
            items = [RawItem(path, path, reason="missing_file", details={"error": str(exc)})]
        for item in items:
            record: dict[str, Any] = {"path": item.source_uri, "sample_id": None, "format": None, "width": None,
                                      "height": None, "mode": None, "notes": item.notes, "error": item.reason}
            if item.data is not None:
                record["sample_id"] = sha256_hex(item.data)
            if item.reason is None and item.data is not None:
                try:
                    facts = probe_image(item.data, limits, with_metadata=True)
                    record.update(format=facts.format, width=facts.width, height=facts.height, mode=facts.mode,
                                  n_frames=facts.n_frames, notes=facts.notes + item.notes)
                    reservation, tdm_note = check_tdm(item.data, facts.format, {"embedded": facts.metadata or {},
                                                                                "sidecar": item.sidecar}, TdmPolicy())
                    record["tdm_reservation"] = reservation.details() if reservation else None
                    if tdm_note:
                        record["notes"] = record["notes"] + [tdm_note]
                    if extractor is not None:
                        record.update(_feature_signals(extractor, item.data))
                        record.update(_exclusion_signals(record["sample_id"], item, facts, record.get("nsfw_score")))
                except ImageRejected as rej:
                    record["error"] = rej.reason
                    record["error_detail"] = rej.details.get("message")
            elif item.details:
                record["error_detail"] = item.details
            failed += record["error"] is not None
            print(json.dumps(record, default=str), flush=True)
    if failed:
        print(f"curate inspect: {failed} input(s) could not be read or decoded", file=sys.stderr)
    return 1 if failed else 0


def _feature_signals(extractor, data: bytes) -> dict[str, Any]:
    import pyarrow as pa

    row = pa.table({"sample_id": ["-"], "source": ["-"], "source_uri": ["-"], "width": pa.array([0], pa.int32()),
                    "height": pa.array([0], pa.int32()), "byte_size": [len(data)], "format": ["-"], "image": [data]})
    features = extractor.process_batch(row).to_pylist()[0]
    return {"phash": f"{features['phash']:016x}", "dhash": f"{features['dhash']:016x}",
            "phash_orientations": [f"{h:016x}" for h in features["phash_orientations"]],
            "embedding_dim": len(features["embedding"]), "embedding_model": features["embedding_model"],
            "nsfw_score": round(float(features["nsfw_score"]), 5)}


def _exclusion_signals(sample_id: str, item, facts, nsfw_score: float | None) -> dict[str, Any]:
    from curation.exclusion import ExclusionConfig, assess

    row, decision = assess(sample_id, item.source_uri, item.data, facts.format,
                           {"embedded": facts.metadata or {}, "sidecar": item.sidecar}, nsfw_score, None,
                           ExclusionConfig())
    keep = ("ai_generated", "ai_signals", "c2pa_present", "c2pa_validation", "c2pa_error", "watermark_bit_accuracy",
            "watermark_error", "stealth_error", "text_detection_error", "artifacts", "eligible_256", "eligible_512",
            "eligible_1024", "refusal_256", "refusal_512", "refusal_1024", "excluded", "exclusion_reasons")
    return {k: row[k] for k in keep}


def ocr_inputs(paths: list[str]) -> list[str]:
    """The files `curate ocr` reads: files as given, directories expanded to the image files inside (recursive,
    sorted; hidden entries skipped); a missing path is kept so that it gets its own error line."""
    from curation.image_io import IMAGE_EXTENSIONS

    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [os.path.join(folder, f) for f in files
                      if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        out += sorted(found)
    return out


def cmd_ocr(args: argparse.Namespace) -> int:
    from captioning.ocr import OcrConfig, load_engine
    from curation.image_io import ImageRejected, load_rgb

    config = OcrConfig(backend=args.backend, min_score=args.min_score, second_pass=args.second_pass,
                       det_model_dir=args.det_model_dir, rec_model_dir=args.rec_model_dir)
    try:
        engine = load_engine(config)
        engine.setup()
    except Exception as exc:  # a missing backend or model directory: one clear message, no traceback
        print(f"curate ocr: cannot start the {args.backend} backend: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in ocr_inputs(args.paths):
        record: dict[str, Any] = {"path": path}
        try:
            with open(path, "rb") as f:
                image = load_rgb(f.read())
            record.update(engine.read(image).to_json())
        except ImageRejected as rej:
            record.update(text="", lines=[], error=rej.reason, error_detail=rej.details.get("message"))
        except OSError as exc:
            record.update(text="", lines=[], error="unreadable", error_detail=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the engine broke on this image: report it and go on with the next one
            record.update(text="", lines=[], error="ocr_failed", error_detail=f"{type(exc).__name__}: {exc}")
        failed += "error" in record
        print(json.dumps(record, ensure_ascii=False), flush=True)
    if failed:
        print(f"curate ocr: {failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
