"""Cheap, deterministic visual facts about an image: orientation, colour or greyscale, brightness, dominant colours.

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for the caption's input record."""
        out = asdict(self)
        out["colours"] = [[name, round(share, 3)] for name, share in self.colours]
        out["brightness"] = round(self.brightness, 3)
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
    background = plain_background(names.reshape(rgb.shape[:2]))
    return VisualFacts(width, height, orientation_of(width, height), greyscale, luma, label, colours, background)


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
