"""Artifact and low-resolution-complexity measures, deliberately blind to blur and softness.

Krea refused "quality" filters that reward sharpness: soft focus and painterly images are kept. What is measured
here is what damages training: borders and letterboxing, extreme aspect ratios, images too small for the first
curriculum stage, heavy JPEG blocking, and content whose detail is lost when brought down to a stage's size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from curation.text_density import small_text_fraction

ANALYSIS_SIDE = 1024
"""Measures run on a copy whose longer side is at most this (stage sizes are <= 1024)."""


@dataclass(frozen=True)
class QualityConfig:
    """Thresholds of the artifact filters and of stage eligibility (defaults measured in bench/quality_eval.py)."""

    stages: tuple[int, ...] = (256, 512, 1024)
    """Curriculum stage sizes (square-equivalent side)."""
    min_scale: float = 0.75
    """A stage needs sqrt(width*height) >= min_scale * stage (a little upsampling is harmless)."""
    max_aspect: float = 4.0
    """Longer side / shorter side above this is an extreme aspect ratio."""
    max_border_fraction: float = 0.10
    """Uniform borders / letterbox bars covering more than this fraction of the image are an artifact."""
    max_blockiness: float = 1.5
    """JPEG 8x8 blocking: boundary/interior step ratio above this (and the excess below) is heavy compression."""
    min_blocking_excess: float = 1.5
    """...and the mean extra step at block boundaries above this many grey levels (a soft image's ratio is high
    even at JPEG q85 because its interior steps are tiny; the absolute excess is not)."""
    max_detail_loss: float = 0.35
    """Fraction of the image's variance lost at a stage's size above which it is too complex for that stage."""
    max_small_text: float = 0.05
    """Share of the image covered by text lines illegible at a stage's size above which it is too complex for that
    stage (photos with labels measure <= 0.005, a dense receipt 0.16 at 256 px: bench/exclusion_eval.py)."""


def _gray(img: Image.Image) -> np.ndarray:
    g = img.convert("L")
    if max(g.size) > ANALYSIS_SIDE:
        g.thumbnail((ANALYSIS_SIDE, ANALYSIS_SIDE), Image.Resampling.BOX)
    return np.asarray(g, dtype=np.float32)


def border_fraction(gray: np.ndarray, tolerance: float = 6.0, min_edge_change: float = 0.5) -> float:
    """Fraction of the image covered by uniform bands along its edges (borders, letterbox and pillarbox bars).

    A row (column) belongs to a band while its pixels stay within `tolerance` grey levels of the edge's colour. A band
    only counts when the picture starts along a straight edge: at least `min_edge_change` of the next line differs
    from the band. Text or an object on a plain background starts with a few pixels, not a whole line, so a poster
    or a product shot is not mistaken for a bordered image.
    """
    h, w = gray.shape
    if h < 4 or w < 4:
        return 0.0

    def band(lines: np.ndarray) -> int:
        reference = np.median(lines[0])
        deviates = np.abs(lines - reference) > tolerance
        uniform = ~deviates.any(axis=1)
        if uniform.all():
            return len(lines)
        length = int(np.argmin(uniform))
        if length == 0:
            return 0
        edge = deviates[length : length + 2].mean()
        return length if edge >= min_edge_change else 0

    top, bottom = band(gray), band(gray[::-1])
    left, right = band(gray.T), band(gray.T[::-1])
    rows = min(h, top + bottom)
    cols = min(w, left + right)
    covered = rows * w + cols * h - rows * cols
    return float(covered) / float(h * w)


def blockiness(gray: np.ndarray) -> tuple[float, float]:
    """JPEG blocking: (mean step across 8-pixel block boundaries / mean step elsewhere, their difference in grey
    levels). No blocking gives (1, 0).

    Measured on the image as stored (before any resize would move the block grid).
    """
    if gray.shape[0] < 32 or gray.shape[1] < 32:
        return 1.0, 0.0
    dx = np.abs(np.diff(gray, axis=1))
    dy = np.abs(np.diff(gray, axis=0))
    cols = np.arange(dx.shape[1])
    rows = np.arange(dy.shape[0])
    on_x, on_y = (cols % 8) == 7, (rows % 8) == 7
    boundary = dx[:, on_x].mean() + dy[on_y, :].mean()
    inside = dx[:, ~on_x].mean() + dy[~on_y, :].mean()
    ratio = float(boundary / inside) if inside > 1e-6 else 1.0
    return ratio, float(boundary - inside) / 2.0


def detail_loss(gray: np.ndarray, side: int) -> float:
    """Fraction of the image's variance lost when it is brought down to a `side`-pixel square-equivalent and back.

    Soft or blurred images lose almost nothing (there is no detail above the stage's Nyquist band), so this never
    penalises softness; dense small text, fine patterns and crowded scenes lose a lot.
    """
    h, w = gray.shape
    scale = side / np.sqrt(h * w)
    if scale >= 1.0:
        return 0.0
    small = (max(1, round(w * scale)), max(1, round(h * scale)))
    img = Image.fromarray(gray.astype(np.uint8))
    round_trip = np.asarray(img.resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BICUBIC),
                            dtype=np.float32)
    variance = float(gray.var())
    if variance < 1e-6:
        return 0.0
    return float(np.mean((gray - round_trip) ** 2) / variance)


STAGE_REFUSALS = ("too_small_for_stage", "text_illegible_at_stage", "detail_lost_at_stage")


def stage_refusal(width: int, height: int, detail_loss_at_stage: float, small_text_at_stage: float | None,
                  stage: int, config: QualityConfig = QualityConfig()) -> dict | None:
    """Why an image may not train at `stage`, with the measure and the bound it broke; None when it may.

    Reasons, first failing check first: `too_small_for_stage` (score: the square-equivalent side sqrt(w*h), which is
    what the aspect buckets scale; threshold: `min_scale` x stage), `text_illegible_at_stage` (score: the share of the
    image covered by text too small to read at the stage; threshold: `max_small_text`), `detail_lost_at_stage`
    (score: the fraction of variance lost at the stage's size; threshold: `max_detail_loss`). The last (largest)
    stage takes any complexity: nothing larger exists to wait for. `details` holds the image's size, its short side,
    and every failing check (`failed`), so a drop for one reason still shows the others.
    """
    side = math.sqrt(width * height)
    failed: list[dict] = []
    if side < config.min_scale * stage:
        failed.append({"reason": "too_small_for_stage", "score": round(side, 1),
                       "threshold": round(config.min_scale * stage, 1)})
    if stage != max(config.stages):
        if small_text_at_stage is not None and small_text_at_stage > config.max_small_text:
            failed.append({"reason": "text_illegible_at_stage", "score": round(float(small_text_at_stage), 4),
                           "threshold": config.max_small_text})
        if detail_loss_at_stage > config.max_detail_loss:
            failed.append({"reason": "detail_lost_at_stage", "score": round(float(detail_loss_at_stage), 4),
                           "threshold": config.max_detail_loss})
    if not failed:
        return None
    return {**failed[0], "details": {"stage_size": stage, "width": width, "height": height,
                                     "short_side": min(width, height), "failed": failed}}


def quality_signals(rgb: Image.Image, config: QualityConfig = QualityConfig(),
                    text_lines: np.ndarray | None = None) -> dict:
    """Every artifact measure and the per-stage eligibility of one image.

    Args:
        rgb: the normalised image at its native resolution.
        config: thresholds.
        text_lines: detected text lines (`curation.text_density.text_lines`); None skips the small-text measure.

    Returns:
        `aspect_ratio`, `border_fraction`, `blockiness`, `detail_loss_<stage>`, `small_text_<stage>` (None when not
        measured), `eligible_<stage>`, `refusal_<stage>` (`stage_refusal`: None when eligible) and
        `artifacts` (the list of artifact reasons: `border`, `extreme_aspect`, `too_small_for_<first stage>`,
        `blocking`).
    """
    gray = _gray(rgb)
    w, h = rgb.size
    side = float(np.sqrt(w * h))
    ratio, excess = blockiness(np.asarray(rgb.convert("L"), dtype=np.float32)[:2048, :2048])
    out: dict = {
        "aspect_ratio": max(w, h) / max(1, min(w, h)),
        "border_fraction": border_fraction(gray),
        "blockiness": ratio,
        "blocking_excess": excess,
    }
    for stage in config.stages:
        loss = detail_loss(gray, stage)
        out[f"detail_loss_{stage}"] = loss
        small_text = None if text_lines is None else small_text_fraction(text_lines, w, h, stage)
        out[f"small_text_{stage}"] = small_text
        refusal = stage_refusal(w, h, loss, small_text, stage, config)
        out[f"eligible_{stage}"] = refusal is None
        out[f"refusal_{stage}"] = refusal
    artifacts = []
    if out["border_fraction"] > config.max_border_fraction:
        artifacts.append("border")
    if out["aspect_ratio"] > config.max_aspect:
        artifacts.append("extreme_aspect")
    if side < config.min_scale * min(config.stages):
        artifacts.append(f"too_small_for_{min(config.stages)}")
    if out["blockiness"] > config.max_blockiness and out["blocking_excess"] > config.min_blocking_excess:
        artifacts.append("blocking")
    out["artifacts"] = artifacts
    return out
