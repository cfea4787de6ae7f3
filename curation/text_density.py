"""How much of an image is text too small to read once the image is brought down to a curriculum stage's size.

Dense small text (receipts, documents, crowded signage) is the content Krea found too complex to model at low
resolution. Generic detail measures cannot tell it from natural texture (grass loses more detail than a receipt),
so text lines are found by the bundled PP-OCRv6 text detector (the OCR stage's own detection, offline) and a line
counts as illegible at a stage when its height there falls below `legible_px`. The boxes are kept (the
`text_boxes` column of `exclusion_signals`) so OCR reads them instead of detecting again.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

_DETECTORS: dict = {}
_LOCK = threading.Lock()


@dataclass(frozen=True)
class TextDensityConfig:
    """The legibility bound."""

    legible_px: float = 8.0
    """A text line shorter than this many pixels at a stage's size cannot be read there."""


class TextDetector:
    """The OCR stage's own text detector (PP-OCRv6, `captioning.ocr.RapidOcrEngine.detect`), so the boxes found
    here for the legibility signals are stored and reused by OCR instead of detecting a second time."""

    def __init__(self, ocr_config=None) -> None:
        from captioning.ocr import OcrConfig, RapidOcrEngine, detection_key

        config = ocr_config or OcrConfig()
        if detection_key(config) is None:
            raise ValueError(f"text detection for legibility needs the rapidocr backend, not {config.backend!r}")
        self.key: str = detection_key(config)
        self._engine = RapidOcrEngine(config)

    def detect(self, rgb: Image.Image) -> np.ndarray:
        """Text boxes (n, 4, 2) in the image's own pixels."""
        return self._engine.detect(rgb)


def default_detector() -> TextDetector:
    """One detector per process with the default OCR settings."""
    with _LOCK:
        if "default" not in _DETECTORS:
            _DETECTORS["default"] = TextDetector()
        return _DETECTORS["default"]


def lines_from_boxes(quads: np.ndarray) -> np.ndarray:
    """(height, area) of each text box (n, 4, 2), clockwise from top-left."""
    quads = np.asarray(quads, dtype=np.float64).reshape(-1, 4, 2)
    if len(quads) == 0:
        return np.empty((0, 2), np.float64)
    heights = (np.linalg.norm(quads[:, 3] - quads[:, 0], axis=1) + np.linalg.norm(quads[:, 2] - quads[:, 1], axis=1))
    widths = (np.linalg.norm(quads[:, 1] - quads[:, 0], axis=1) + np.linalg.norm(quads[:, 2] - quads[:, 3], axis=1))
    heights, widths = heights / 2, widths / 2
    return np.stack([heights, heights * widths], axis=1)


def text_lines(rgb: Image.Image, detector: TextDetector | None = None) -> np.ndarray:
    """Detected text lines as (height, area) in the image's own pixels, one row per line.

    Args:
        rgb: the normalised image at native resolution.
        detector: the text detector (default: the OCR stage's default settings).

    Returns:
        float array of shape (n, 2); empty when no text is found.
    """
    return lines_from_boxes((detector or default_detector()).detect(rgb))


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
