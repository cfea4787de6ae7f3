"""Exclusion decisions for one image: AI-generated (any confident signal), NSFW, artifacts; plus stage eligibility.

Pure: takes the stored bytes, the ingest metadata and the features row, returns every score and flag and, when the
image must go, one ledger decision naming the reason (the other reasons ride along in its details).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from curation.ai_metadata import metadata_signals, stealth_signals
from curation.decisions import Decision
from curation.image_io import ProbeLimits, probe_image
from curation.provenance import c2pa_signals, sdxl_watermark
from curation.quality import QualityConfig, quality_signals
from curation.text_density import TextDetector, default_detector, lines_from_boxes

EXCLUSION_CODE_VERSION = "exclusion-2"  # -2: text boxes kept for OCR, detector errors recorded
DETECTOR_ERRORS = ("c2pa_error", "watermark_error", "stealth_error", "text_detection_error")
"""Row columns (and ledger detail keys) naming a detector that could not run: its verdict is unknown."""
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "TIFF": "image/tiff",
         "AVIF": "image/avif", "HEIF": "image/heif"}


@dataclass(frozen=True)
class ExclusionConfig:
    """Which signals run and where the thresholds are."""

    nsfw_threshold: float = 0.8
    """open-NSFW probability at or above which an image is dropped (Yahoo's own "unsafe" bound)."""
    check_c2pa: bool = True
    """Read C2PA manifests."""
    check_watermark: bool = True
    """Decode the SDXL invisible watermark."""
    check_stealth: bool = True
    """Look for stealth-pnginfo payloads in alpha/RGB low bits."""
    drop_artifacts: bool = True
    """Drop images with artifacts (borders, extreme aspect, too small for the first stage, heavy blocking)."""
    check_small_text: bool = True
    """Detect text lines (bundled PP-OCRv6 detector, ~0.1-0.2 s per image) to find text illegible at a stage."""
    probe_threshold: float = 0.99
    """Learned-probe probability at or above which an image counts as AI-generated (conservative by default)."""
    quality: QualityConfig = field(default_factory=QualityConfig)
    """Artifact thresholds and curriculum stages."""


def exclusion_schema(stages: tuple[int, ...]) -> pa.Schema:
    """Schema of `exclusion_signals` for the configured curriculum stages."""
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("source_uri", pa.string(), nullable=False),
            pa.field("ai_generated", pa.bool_(), nullable=False),
            pa.field("ai_signals", pa.list_(pa.string()), nullable=False),
            pa.field("c2pa_present", pa.bool_()),  # null: not checked, or the reader failed (c2pa_error)
            pa.field("c2pa_validation", pa.string()),
            pa.field("c2pa_error", pa.string()),  # why the C2PA store could not be read: unknown, not "absent"
            pa.field("watermark_bit_accuracy", pa.float32()),
            pa.field("watermark_error", pa.string()),  # why the SDXL decoder gave no accuracy: unknown, not "absent"
            pa.field("stealth_error", pa.string()),
            pa.field("probe_score", pa.float32()),
            pa.field("nsfw_score", pa.float32()),
            pa.field("aspect_ratio", pa.float32(), nullable=False),
            pa.field("border_fraction", pa.float32(), nullable=False),
            pa.field("blockiness", pa.float32(), nullable=False),
            pa.field("blocking_excess", pa.float32(), nullable=False),
            *[pa.field(f"detail_loss_{s}", pa.float32(), nullable=False) for s in stages],
            *[pa.field(f"small_text_{s}", pa.float32()) for s in stages],
            pa.field("text_lines", pa.int32()),
            pa.field("text_boxes", pa.list_(pa.list_(pa.float32(), 8))),
            pa.field("text_detection", pa.string()),
            pa.field("text_detection_error", pa.string()),
            *[pa.field(f"eligible_{s}", pa.bool_(), nullable=False) for s in stages],
            # why not eligible: JSON {reason, score, threshold, details} of `curation.quality.stage_refusal`, or null
            *[pa.field(f"refusal_{s}", pa.string()) for s in stages],
            pa.field("artifacts", pa.list_(pa.string()), nullable=False),
            pa.field("excluded", pa.bool_(), nullable=False),
            pa.field("exclusion_reasons", pa.list_(pa.string()), nullable=False),
        ]
    )


def _ai_reason(signals: list[str]) -> str:
    kinds = [s.split(":", 1)[0] for s in signals]
    for kind, reason in (("c2pa", "ai_generated_c2pa"), ("c2pa_invalid", "ai_generated_c2pa_invalid"),
                         ("watermark", "ai_generated_watermark"), ("stealth", "ai_generated_stealth"),
                         ("probe", "ai_generated_probe")):
        if kind in kinds:
            return reason
    return "ai_generated_metadata"


def assess(sample_id: str, source_uri: str, data: bytes, fmt: str, metadata: dict, nsfw_score: float | None,
           probe_score: float | None, config: ExclusionConfig,
           detector: TextDetector | None = None) -> tuple[dict, Decision | None]:
    """Every exclusion signal of one image and the ledger decision if it is excluded.

    Args:
        sample_id: the image's sha256.
        source_uri: where it came from.
        data: the original bytes.
        fmt: the format found at ingest (`JPEG`, `PNG`, ...).
        metadata: the ingest metadata document (`{"embedded": ..., "sidecar": ...}`).
        nsfw_score: from `image_features` (None if unknown).
        probe_score: the learned AI-image probe's probability (None if no probe is trained).
        config: thresholds and switches.
        detector: the text detector (default: the OCR stage's default detection); its boxes are returned in the
            row (`text_boxes`, under the key `text_detection`) for OCR to reuse.

    Returns:
        (row for `exclusion_signals`, a decision or None). A `drop` takes the stage of the first reason in the order
        ai_image, nsfw, artifact; all reasons and any detector errors are in its details. A kept image on which a
        detector failed (`DETECTOR_ERRORS`) gets a `keep` decision, reason `detector_error`, naming each error.
    """
    signals = list(metadata_signals(metadata))
    row: dict = {"sample_id": sample_id, "source_uri": source_uri, "c2pa_present": None, "c2pa_validation": None,
                 "c2pa_error": None, "watermark_bit_accuracy": None, "watermark_error": None, "stealth_error": None,
                 "probe_score": probe_score, "nsfw_score": nsfw_score}
    if config.check_c2pa:
        c2pa = _run_detector(c2pa_signals, data, _MIME.get(fmt))
        row["c2pa_error"] = c2pa.get("error")
        # a reader that failed before finding a store has not seen "no manifest": leave presence unknown
        row["c2pa_present"] = True if c2pa.get("present") else (None if row["c2pa_error"] else False)
        row["c2pa_validation"] = c2pa.get("validation_state")
        if c2pa.get("trained_algorithmic"):
            # with no trust list configured an intact manifest is "Valid" with one error, signingCredential.untrusted:
            # that is the normal case for generator credentials, not tampering
            errors = [e for e in c2pa.get("validation_errors") or [] if e != "signingCredential.untrusted"]
            valid = not errors and str(c2pa.get("validation_state") or "").lower() in ("valid", "trusted")
            signals.append(("c2pa:" if valid else "c2pa_invalid:") + ",".join(c2pa.get("digital_source_types", [])))
    facts = probe_image(data, ProbeLimits(min_side=1))  # one decode serves the raw-pixel and the RGB checks
    rgb = facts.rgb
    if config.check_stealth and facts.decoded is not None and facts.decoded.mode in ("RGBA", "RGB"):
        try:
            signals += stealth_signals(facts.decoded)
        except Exception as exc:  # a crashed detector is recorded, never read as "nothing found"
            row["stealth_error"] = f"stealth reader crashed: {type(exc).__name__}: {exc}"
    if config.check_watermark:
        mark = _run_detector(sdxl_watermark, rgb)
        row["watermark_bit_accuracy"] = mark.get("bit_accuracy")
        row["watermark_error"] = mark.get("error")
        if mark.get("detected"):
            signals.append(f"watermark:sdxl_dwtdct({mark['bit_accuracy']:.3f})")
    if probe_score is not None and probe_score >= config.probe_threshold:
        signals.append(f"probe:{probe_score:.3f}")
    lines = None
    row.update({"text_boxes": None, "text_detection": None, "text_detection_error": None})
    if config.check_small_text:
        try:
            detector = detector or default_detector()
            boxes = detector.detect(rgb)
            lines = lines_from_boxes(boxes)
            row["text_boxes"] = boxes.reshape(-1, 8).astype(np.float32).tolist()
            row["text_detection"] = detector.key
        except Exception as exc:  # a crashed detector is recorded as such, never read as "no text"
            row["text_detection_error"] = f"{type(exc).__name__}: {exc}"
    quality = quality_signals(rgb, config.quality, lines)
    row.update({k: v for k, v in quality.items() if k != "artifacts" and not k.startswith("refusal_")})
    row.update({k: None if v is None else json.dumps(v, sort_keys=True) for k, v in quality.items()
                if k.startswith("refusal_")})
    row["text_lines"] = None if lines is None else len(lines)
    row["artifacts"] = quality["artifacts"]
    row["ai_signals"] = signals
    row["ai_generated"] = bool(signals)

    reasons: list[tuple[str, str, float | None, float | None]] = []  # (stage, reason, score, threshold)
    if signals:
        kind = _ai_reason(signals)
        score = row["watermark_bit_accuracy"] if kind == "ai_generated_watermark" else (
            probe_score if kind == "ai_generated_probe" else None)
        threshold = config.probe_threshold if kind == "ai_generated_probe" else None
        reasons.append(("ai_image", kind, score, threshold))
    if nsfw_score is not None and nsfw_score >= config.nsfw_threshold:
        reasons.append(("nsfw", "nsfw", float(nsfw_score), config.nsfw_threshold))
    if config.drop_artifacts:
        for artifact in quality["artifacts"]:
            reasons.append(("artifact", artifact, None, None))
    row["excluded"] = bool(reasons)
    row["exclusion_reasons"] = [r[1] for r in reasons]
    errors = {k: row[k] for k in DETECTOR_ERRORS if row[k]}
    if not reasons:
        if errors:  # kept, but not cleared by every detector: the ledger says which could not run and why
            return row, Decision(sample_id, source_uri, "ai_image", "keep", "detector_error", details=errors)
        return row, None
    stage, reason, score, threshold = reasons[0]
    details = {"ai_signals": signals, "all_reasons": row["exclusion_reasons"], "artifacts": quality["artifacts"],
               "nsfw_score": nsfw_score, **errors}
    return row, Decision(sample_id, source_uri, stage, "drop", reason, score=score, threshold=threshold,
                         details=details)


def _run_detector(detector, *args) -> dict:
    """A detector's result dict; an unexpected exception becomes its `error` instead of taking the part down."""
    try:
        return detector(*args)
    except Exception as exc:  # recorded as the error, never as "not detected"
        return {"error": f"{detector.__name__} crashed: {type(exc).__name__}: {exc}"}
