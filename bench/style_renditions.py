"""The same photos through distinct, deterministic styles (OpenCV), for the style benchmarks.

`cv2.xphoto` (the contrib oil painting) is not in this OpenCV build, so the oil-painting style is a Kuwahara filter
written here. Every function takes and returns an RGB uint8 array.
"""

from __future__ import annotations

import cv2
import numpy as np

SIDE = 384
"""Photos are brought to this longer side first (styles at a common scale; the CNN sees 224 px anyway)."""


def fit(rgb: np.ndarray, side: int = SIDE) -> np.ndarray:
    """The photo with its longer side at `side`."""
    h, w = rgb.shape[:2]
    scale = side / max(h, w)
    return cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def photo(rgb: np.ndarray) -> np.ndarray:
    return rgb


def stylization(rgb: np.ndarray) -> np.ndarray:
    return cv2.stylization(rgb, sigma_s=60, sigma_r=0.45)


def pencil(rgb: np.ndarray) -> np.ndarray:
    gray, _ = cv2.pencilSketch(rgb, sigma_s=60, sigma_r=0.07, shade_factor=0.05)
    return cv2.cvtColor(gray, cv2.COLOR_GRAY2RGB)


def kuwahara(rgb: np.ndarray, radius: int = 5) -> np.ndarray:
    """Oil-painting look: each pixel takes the mean of the least varied of its four (radius+1)^2 quadrants."""
    img = rgb.astype(np.float32)
    lum = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    k = radius + 1
    means, variances = [], []
    for anchor in ((0, 0), (radius, 0), (0, radius), (radius, radius)):
        mean = cv2.blur(img, (k, k), anchor=anchor, borderType=cv2.BORDER_REFLECT)
        m = cv2.blur(lum, (k, k), anchor=anchor, borderType=cv2.BORDER_REFLECT)
        sq = cv2.blur(lum * lum, (k, k), anchor=anchor, borderType=cv2.BORDER_REFLECT)
        means.append(mean)
        variances.append(sq - m * m)
    best = np.argmin(np.stack(variances), axis=0)
    out = np.take_along_axis(np.stack(means), best[None, :, :, None].repeat(3, axis=-1), axis=0)[0]
    return np.clip(out, 0, 255).astype(np.uint8)


def halftone(rgb: np.ndarray, cell: int = 6) -> np.ndarray:
    """Black dots on white paper, each dot's area proportional to the darkness of its cell."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    h, w = gray.shape
    cells = cv2.resize(gray, (max(1, w // cell), max(1, h // cell)), interpolation=cv2.INTER_AREA)
    radius = np.sqrt((1.0 - cells) / np.pi) * cell * 1.15
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = np.minimum(yy // cell, cells.shape[0] - 1), np.minimum(xx // cell, cells.shape[1] - 1)
    dist = np.hypot(yy - (cy * cell + cell / 2), xx - (cx * cell + cell / 2))
    ink = dist < radius[cy, cx]
    out = np.where(ink, 20, 245).astype(np.uint8)
    return cv2.cvtColor(out, cv2.COLOR_GRAY2RGB)


def pixelate(rgb: np.ndarray, block: int = 12) -> np.ndarray:
    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, w // block), max(1, h // block)), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)


def posterize(rgb: np.ndarray, levels: int = 4) -> np.ndarray:
    step = 256 // levels
    return (rgb // step * step + step // 2).astype(np.uint8)


def watercolour(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat washes (mean shift), pigment pooling at wash edges, paper granulation, lifted whites."""
    washes = cv2.pyrMeanShiftFiltering(rgb, sp=12, sr=40)
    washes = cv2.GaussianBlur(washes, (0, 0), 1.5).astype(np.float32)
    edges = cv2.Laplacian(cv2.cvtColor(washes.astype(np.uint8), cv2.COLOR_RGB2GRAY), cv2.CV_32F, ksize=3)
    pooled = washes * (1 - np.clip(np.abs(edges) / 80.0, 0, 0.35))[..., None]
    rng = np.random.default_rng(seed)
    h, w = rgb.shape[:2]
    grain = cv2.resize(rng.random((h // 4 + 1, w // 4 + 1), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    paper = 0.88 + 0.12 * grain
    light = 255 - (255 - pooled) * 0.8  # thinned pigment: the paper shows through
    return np.clip(light * paper[..., None], 0, 255).astype(np.uint8)


def cartoon(rgb: np.ndarray) -> np.ndarray:
    """Bold black outlines over flat, bilateral-smoothed colour."""
    smooth = rgb
    for _ in range(3):
        smooth = cv2.bilateralFilter(smooth, 9, 60, 60)
    gray = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), 5)
    lines = cv2.adaptiveThreshold(gray, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY, 9, 4)
    return cv2.bitwise_and(posterize(smooth, 6), cv2.cvtColor(lines, cv2.COLOR_GRAY2RGB))


STYLES = {"photo": photo, "stylization": stylization, "pencil": pencil, "oil_kuwahara": kuwahara,
          "halftone": halftone, "pixelation": pixelate, "posterize": posterize, "watercolour": watercolour,
          "cartoon": cartoon}
