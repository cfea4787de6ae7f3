"""Cheap, deterministic visual facts about an image: orientation, colour or greyscale, brightness, dominant colours,
and the character of light, colour and layout (contrast, the lighter side, vivid or muted colours, warm or cool
tones, the colour at the centre against the edges, top against bottom, fine texture or smooth tones).

Everything is measured on a thumbnail of at most `THUMBNAIL_SIDE` px with numpy, in well under a millisecond per
image, so the grounded captioner can describe what it can measure and nothing else. Colour names come from fixed
HSV rules over a small palette (a histogram of per-pixel names, not k-means), so the same image always gets the
same words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps

THUMBNAIL_SIDE = 64
"""Longer side of the thumbnail every fact is measured on."""
SQUARE_TOLERANCE = 1.05
"""An image whose longer side is at most this many times its shorter side is called square."""
GREY_CHROMA = 0.06
"""A pixel with (max - min) / 255 of its RGB channels below this is achromatic."""
GREYSCALE_PIXEL_FRACTION = 0.98
"""An image is greyscale when at least this fraction of its pixels is achromatic."""
MIN_COLOUR_FRACTION = 0.12
"""Smallest share of the pixels a colour needs to be named among the dominant colours."""
MAX_COLOURS = 3
"""Most colours named."""
BORDER_FRACTION = 0.125
"""Width of the border strip (share of each side) that the background is measured on."""
BACKGROUND_BORDER_SHARE = 0.85
"""A plain background: one colour name covers at least this share of the border strip..."""
BACKGROUND_CENTRE_SHARE = 0.5
"""...and less than this share of the centre (otherwise the whole image is that colour, not a background)."""

HIGH_CONTRAST = 0.28
"""Standard deviation of the luma (0-1) from which an image is called high-contrast..."""
LOW_CONTRAST = 0.08
"""...and below which low-contrast (never said of a dark image: a night sky is dark, not low-contrast)."""
LIGHTER_SIDE_TOP_BOTTOM = 0.25
"""Mean-luma difference between the top and bottom thirds that makes one of them 'lighter'..."""
LIGHTER_SIDE_LEFT_RIGHT = 0.3
"""...and between the left and right thirds."""
VIVID_SATURATION = 0.55
"""Mean HSV saturation from which the colours are vivid..."""
MUTED_SATURATION = 0.15
"""...and below which they are muted (colour images only)."""
CHROMATIC_SATURATION = 0.25
"""A pixel counts towards warm/cool tones when its saturation reaches this and its value 0.2."""
TONE_PIXEL_FRACTION = 0.2
"""Warm or cool tones are named only when at least this share of the pixels is chromatic..."""
TONE_SHARE = 0.8
"""...and this share of those is warm (red to yellow, and magenta-red) or cool (green-cyan to blue-violet)."""
REGION_SHARE = 0.5
"""A region (top or bottom third, border) is 'one colour' when its most common name covers this share."""
CENTRE_SHARE = 0.4
"""The centre's colour is named when its most common name covers this share of the centre."""
FINE_TEXTURE_EDGES = 0.05
"""Mean absolute luma step between neighbouring thumbnail pixels from which the image has fine texture, when the
steps are also large against the overall contrast (ratio `FINE_TEXTURE_RATIO`): many small edges, not a few big
ones (a silhouette)..."""
FINE_TEXTURE_RATIO = 1.0
SMOOTH_EDGES = 0.03
"""...and below which its tones are smooth."""

PALETTE = (
    "black", "dark grey", "grey", "light grey", "white",
    "red", "dark red", "pink", "orange", "brown", "beige", "yellow", "olive",
    "green", "dark green", "light green", "teal", "blue", "dark blue", "light blue", "purple", "dark purple",
)
"""Every colour name the classifier can produce (index = class id)."""


@dataclass(frozen=True)
class VisualFacts:
    """What the grounded captioner may say about the pixels."""

    width: int
    """Width in pixels after applying the EXIF orientation."""
    height: int
    """Height in pixels after applying the EXIF orientation."""
    orientation: str
    """'landscape', 'portrait' or 'square'."""
    greyscale: bool
    """True when (almost) every pixel is achromatic: a black-and-white image."""
    brightness: float
    """Mean luma in [0, 1]."""
    brightness_label: str | None
    """'dark', 'bright' or None for an ordinary exposure."""
    colours: tuple[tuple[str, float], ...]
    """Dominant colour names with their share of the pixels, largest first."""
    background: str | None = None
    """The colour of a plain background (a uniform border around a different centre), or None."""
    contrast: float = 0.0
    """Standard deviation of the luma in [0, 0.5]."""
    contrast_label: str | None = None
    """'high', 'low' or None."""
    lighter_side: str | None = None
    """'top', 'bottom', 'left' or 'right' when that third is clearly lighter than its opposite, else None."""
    saturation: float = 0.0
    """Mean HSV saturation in [0, 1]."""
    saturation_label: str | None = None
    """'vivid', 'muted' or None (always None for a black-and-white image)."""
    tones: str | None = None
    """'warm', 'cool' or None."""
    centre_colour: tuple[str, str] | None = None
    """(colour of the centre, colour of the edges) when each is one colour and they differ."""
    top_bottom: tuple[str, str] | None = None
    """(colour of the top third, colour of the bottom third) when each is one colour and they differ."""
    texture: str | None = None
    """'fine' (many small edges) or 'smooth' (almost none), else None."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the caption's input record."""
        out = asdict(self)
        for key in ("brightness", "contrast", "saturation"):
            out[key] = round(out[key], 3)
        out["colours"] = [[name, round(share, 3)] for name, share in self.colours]
        return out


def orientation_of(width: int, height: int) -> str:
    """'landscape', 'portrait' or 'square' (within `SQUARE_TOLERANCE`)."""
    if max(width, height) <= SQUARE_TOLERANCE * min(width, height):
        return "square"
    return "landscape" if width > height else "portrait"


def _rgb_thumbnail(image: Image.Image) -> np.ndarray:
    img = image
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))  # transparent areas show as white
        img = Image.alpha_composite(background, rgba)
    thumb = img.convert("RGB")
    thumb.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(thumb, dtype=np.float32) / 255.0


def classify_pixels(rgb: np.ndarray) -> np.ndarray:
    """Name every pixel with an index into `PALETTE`.

    Args:
        rgb: float array in [0, 1] of shape (..., 3).

    Returns:
        An int array of shape (...) of palette indices.
    """
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = rgb.max(axis=-1)
    mn = rgb.min(axis=-1)
    chroma = mx - mn
    v = mx
    s = np.where(mx > 0, chroma / np.maximum(mx, 1e-6), 0.0)
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(
        mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    ) * 60.0
    idx = {name: i for i, name in enumerate(PALETTE)}
    out = np.full(rgb.shape[:-1], idx["grey"], dtype=np.int64)

    def put(mask: np.ndarray, name: str) -> None:
        out[mask & ~assigned] = idx[name]
        assigned[mask] = True

    assigned = np.zeros(rgb.shape[:-1], dtype=bool)
    achromatic = (chroma < GREY_CHROMA) | (s < 0.12)
    put(v < 0.13, "black")
    put(achromatic & (v > 0.9), "white")
    put(achromatic & (v > 0.68), "light grey")
    put(achromatic & (v > 0.38), "grey")
    put(achromatic, "dark grey")
    dark, light = v < 0.42, (s < 0.45) & (v > 0.75)
    red = (hue < 15) | (hue >= 345)
    orange = (hue >= 15) & (hue < 45)
    yellow = (hue >= 45) & (hue < 70)
    green = (hue >= 70) & (hue < 165)
    teal = (hue >= 165) & (hue < 195)
    blue = (hue >= 195) & (hue < 260)
    purple = (hue >= 260) & (hue < 300)
    magenta = (hue >= 300) & (hue < 345)
    put((red | orange) & (v < 0.62) & ~(red & (s > 0.75)), "brown")
    put(red & dark, "dark red")
    put((red | magenta) & light, "pink")
    put(red, "red")
    put(magenta & (s > 0.45) & (v > 0.55), "pink")
    put(orange & (s < 0.45) & (v > 0.7), "beige")
    put(orange, "orange")
    put(yellow & (v < 0.6), "olive")
    put(yellow, "yellow")
    put(green & dark, "dark green")
    put(green & light, "light green")
    put(green, "green")
    put(teal, "teal")
    put(blue & dark, "dark blue")
    put(blue & light, "light blue")
    put(blue, "blue")
    put((purple | magenta) & dark, "dark purple")
    put(purple | magenta, "purple")
    return out


def visual_facts(image: Image.Image) -> VisualFacts:
    """Measure orientation, greyscale, brightness and dominant colours of an image.

    Args:
        image: any Pillow image; the EXIF orientation is applied first, transparency is composited on white.

    Returns:
        The facts, identical for identical pixels.
    """
    upright = ImageOps.exif_transpose(image) if image.getexif().get(0x0112, 1) != 1 else image
    width, height = upright.size
    rgb = _rgb_thumbnail(upright)
    pixels = rgb.reshape(-1, 3)
    luma = float((pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).mean()) if len(pixels) else 0.0
    chroma = pixels.max(axis=1) - pixels.min(axis=1)
    greyscale = upright.mode in ("1", "L", "LA", "I", "I;16", "F") or bool(
        (chroma < GREY_CHROMA).mean() >= GREYSCALE_PIXEL_FRACTION)
    names = classify_pixels(pixels)
    if greyscale:  # a black-and-white image is described with grey tones only, never a faint tint
        names = classify_pixels(np.repeat(pixels.mean(axis=1, keepdims=True), 3, axis=1))
    counts = np.bincount(names, minlength=len(PALETTE)) / max(len(names), 1)
    order = sorted(range(len(PALETTE)), key=lambda i: (-counts[i], i))
    colours = tuple((PALETTE[i], float(counts[i])) for i in order[:MAX_COLOURS] if counts[i] >= MIN_COLOUR_FRACTION)
    label = "dark" if luma < 0.25 else "bright" if luma > 0.75 else None
    grid = names.reshape(rgb.shape[:2])
    background = plain_background(grid)
    return VisualFacts(width, height, orientation_of(width, height), greyscale, luma, label, colours, background,
                       **character(rgb, grid, greyscale, label))


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mx, mn = rgb.max(axis=-1), rgb.min(axis=-1)
    chroma = mx - mn
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(chroma, 1e-6)
    hue = np.where(mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
    return hue * 60.0, np.where(mx > 0, chroma / np.maximum(mx, 1e-6), 0.0), mx


def _one_colour(names: np.ndarray, share: float) -> str | None:
    if names.size == 0:
        return None
    counts = np.bincount(names.ravel(), minlength=len(PALETTE))
    top = int(counts.argmax())
    return PALETTE[top] if counts[top] >= share * names.size else None


def character(rgb: np.ndarray, names: np.ndarray, greyscale: bool, brightness_label: str | None) -> dict[str, Any]:
    """Contrast, lighter side, saturation, tones, colour layout and texture of a thumbnail.

    Args:
        rgb: the thumbnail, float in [0, 1], shape (h, w, 3).
        names: its palette index per pixel, shape (h, w) (grey tones only for a black-and-white image).
        greyscale: the image is black-and-white (no saturation or tones are named).
        brightness_label: 'dark', 'bright' or None (a dark image is never called low-contrast).

    Returns:
        The `VisualFacts` fields from `contrast` to `texture`; a label is None unless its measure passes the
        thresholds above, so only what stands out is stated.
    """
    h, w = names.shape
    out: dict[str, Any] = {}
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    std = float(luma.std()) if luma.size else 0.0
    out["contrast"] = std
    out["contrast_label"] = ("high" if std >= HIGH_CONTRAST else
                             "low" if std < LOW_CONTRAST and brightness_label != "dark" else None)
    third_h, third_w = max(1, h // 3), max(1, w // 3)
    vertical = float(luma[:third_h].mean() - luma[-third_h:].mean()) if h >= 3 else 0.0
    horizontal = float(luma[:, :third_w].mean() - luma[:, -third_w:].mean()) if w >= 3 else 0.0
    side = None
    if abs(vertical) >= LIGHTER_SIDE_TOP_BOTTOM and abs(vertical) / LIGHTER_SIDE_TOP_BOTTOM >= abs(
            horizontal) / LIGHTER_SIDE_LEFT_RIGHT:
        side = "top" if vertical > 0 else "bottom"
    elif abs(horizontal) >= LIGHTER_SIDE_LEFT_RIGHT:
        side = "left" if horizontal > 0 else "right"
    out["lighter_side"] = side
    hue, sat, value = _hsv(rgb)
    out["saturation"] = 0.0 if greyscale else float(sat.mean()) if sat.size else 0.0
    out["saturation_label"] = None if greyscale else (
        "vivid" if out["saturation"] >= VIVID_SATURATION else "muted" if out["saturation"] < MUTED_SATURATION
        else None)
    tones = None
    chromatic = (sat >= CHROMATIC_SATURATION) & (value >= 0.2)
    if not greyscale and chromatic.mean() >= TONE_PIXEL_FRACTION:
        hc = hue[chromatic]
        if ((hc < 70) | (hc >= 330)).mean() >= TONE_SHARE:
            tones = "warm"
        elif ((hc >= 150) & (hc < 280)).mean() >= TONE_SHARE:
            tones = "cool"
    out["tones"] = tones
    out["centre_colour"] = out["top_bottom"] = None
    if h >= 4 and w >= 4:
        centre = names[h // 4 : h - h // 4, w // 4 : w - w // 4]
        edge_mask = np.ones_like(names, dtype=bool)
        edge_mask[h // 4 : h - h // 4, w // 4 : w - w // 4] = False
        inner, outer = _one_colour(centre, CENTRE_SHARE), _one_colour(names[edge_mask], REGION_SHARE)
        if inner and outer and inner != outer:
            out["centre_colour"] = (inner, outer)
        top, bottom = _one_colour(names[:third_h], REGION_SHARE), _one_colour(names[-third_h:], REGION_SHARE)
        if top and bottom and top != bottom:
            out["top_bottom"] = (top, bottom)
    edges = 0.0
    if h >= 2 and w >= 2:
        edges = float(np.abs(np.diff(luma, axis=1)).mean() + np.abs(np.diff(luma, axis=0)).mean())
    out["texture"] = ("fine" if edges >= FINE_TEXTURE_EDGES and edges >= FINE_TEXTURE_RATIO * std else
                      "smooth" if edges < SMOOTH_EDGES and h >= 8 and w >= 8 else None)
    return out


def plain_background(names: np.ndarray) -> str | None:
    """The palette name of a plain background in a 2-D map of pixel names, or None.

    Product shots and studio portraits have one: a border strip almost all one colour around a centre that is not.
    """
    h, w = names.shape
    bh, bw = max(1, round(h * BORDER_FRACTION)), max(1, round(w * BORDER_FRACTION))
    if h < 4 or w < 4:
        return None
    border = np.concatenate([names[:bh].ravel(), names[-bh:].ravel(), names[bh:-bh, :bw].ravel(),
                             names[bh:-bh, -bw:].ravel()])
    counts = np.bincount(border, minlength=len(PALETTE))
    top = int(counts.argmax())
    if counts[top] < BACKGROUND_BORDER_SHARE * len(border):
        return None
    centre = names[h // 4 : h - h // 4, w // 4 : w - w // 4]
    if centre.size == 0 or (centre == top).mean() >= BACKGROUND_CENTRE_SHARE:
        return None
    return PALETTE[top]
