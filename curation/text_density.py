"""How much of an image is text too small to read once the image is brought down to a curriculum stage's size.

Dense small text (receipts, documents, crowded signage) is the content Krea found too complex to model at low
resolution. Generic detail measures cannot tell it from natural texture (grass loses more detail than a receipt),
so text lines are found by the bundled PP-OCRv6 text detector (rapidocr, detection only, offline) and a line counts
as illegible at a stage when its height there falls below `legible_px`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

_ENGINE = None
_LOCK = threading.Lock()


@dataclass(frozen=True)
class TextDensityConfig:
    """Detector input size and the legibility bound."""

    det_side: int = 960
    """The detector sees a copy whose longer side is at most this (cost grows with area; lines taller than
    ~8 px at this size are found)."""
    legible_px: float = 8.0
    """A text line shorter than this many pixels at a stage's size cannot be read there."""


def _engine():
    global _ENGINE
    with _LOCK:
        if _ENGINE is None:
            from rapidocr import RapidOCR

            _ENGINE = RapidOCR(params={"Global.use_cls": False, "Global.use_rec": False,
                                       "Global.log_level": "critical"})
        return _ENGINE


def text_lines(rgb: Image.Image, config: TextDensityConfig = TextDensityConfig()) -> np.ndarray:
    """Detected text lines as (height, area) in the image's own pixels, one row per line.

    Args:
        rgb: the normalised image at native resolution.
        config: detector input size.

    Returns:
        float array of shape (n, 2); empty when no text is found.
    """
    factor = min(1.0, config.det_side / max(rgb.size))
    size = (max(1, round(rgb.width * factor)), max(1, round(rgb.height * factor)))
    small = rgb if factor >= 1.0 else rgb.resize(size, Image.Resampling.BILINEAR)
    result = _engine()(np.asarray(small), use_det=True, use_cls=False, use_rec=False)
    boxes = getattr(result, "boxes", None)
    if boxes is None or len(boxes) == 0:
        return np.empty((0, 2), np.float64)
    quads = np.asarray(boxes, dtype=np.float64) / factor  # (n, 4, 2), clockwise from top-left
    heights = (np.linalg.norm(quads[:, 3] - quads[:, 0], axis=1) + np.linalg.norm(quads[:, 2] - quads[:, 1], axis=1))
    widths = (np.linalg.norm(quads[:, 1] - quads[:, 0], axis=1) + np.linalg.norm(quads[:, 2] - quads[:, 3], axis=1))
    heights, widths = heights / 2, widths / 2
    return np.stack([heights, heights * widths], axis=1)


def small_text_fraction(lines: np.ndarray, width: int, height: int, stage: int,
                        config: TextDensityConfig = TextDensityConfig()) -> float:
    """Share of the image covered by text lines that are illegible at `stage` (square-equivalent side).

    Args:
        lines: from `text_lines`.
        width: image width (native pixels).
        height: image height.
        stage: the curriculum stage size.
        config: the legibility bound.
    """
    if len(lines) == 0:
        return 0.0
    scale = min(1.0, stage / np.sqrt(width * height))
    illegible = lines[:, 0] * scale < config.legible_px
    return float(min(1.0, lines[illegible, 1].sum() / (width * height)))
