"""Image bytes in, facts or a rejection reason out: format sniffing, safe decoding, normalisation to RGB.

Every later stage decodes through `load_rgb`, so the odd modes (CMYK, 16-bit, palette with transparency, EXIF
orientation, animation) are handled once, here, and the same way everywhere.
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from curation.metadata import extract_metadata

# Pillow's own bomb guard is a process-wide global; we apply the configured limit ourselves from the header, so
# Pillow's check only needs to stay out of the way (it would raise at 2x its default before ours is consulted).
Image.MAX_IMAGE_PIXELS = None
ImageFile.LOAD_TRUNCATED_IMAGES = False

# Magic bytes -> format name. Extensions are never trusted.
_MAGIC: list[tuple[int, bytes, str]] = [
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\xff\x4f\xff\x51", "JPEG2000"),
    (0, b"\x00\x00\x00\x0cjP  ", "JPEG2000"),
    (0, b"qoif", "QOI"),
]
_FTYP_BRANDS = {b"avif": "AVIF", b"avis": "AVIF", b"heic": "HEIF", b"heix": "HEIF", b"mif1": "HEIF", b"msf1": "HEIF"}
IMAGE_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "TIFF", "ICO", "JPEG2000", "QOI", "WEBP", "AVIF", "HEIF"})
# Extensions we expect for each format, to note a mismatch (the bytes win; the note tells the user).
_EXTENSIONS = {
    "JPEG": {".jpg", ".jpeg", ".jpe", ".jfif"},
    "PNG": {".png"},
    "GIF": {".gif"},
    "BMP": {".bmp", ".dib"},
    "TIFF": {".tif", ".tiff"},
    "ICO": {".ico"},
    "JPEG2000": {".jp2", ".j2k", ".jpf", ".jpx"},
    "QOI": {".qoi"},
    "WEBP": {".webp"},
    "AVIF": {".avif"},
    "HEIF": {".heic", ".heif"},
}
IMAGE_EXTENSIONS = frozenset(ext for exts in _EXTENSIONS.values() for ext in exts)


def sniff_format(data: bytes) -> str | None:
    """Name the container format of `data` from its magic bytes.

    Args:
        data: the file's bytes (only the first 32 are looked at).

    Returns:
        An image format name (`JPEG`, `PNG`, `WEBP`, ...), `TAR`, `PARQUET`, `SVG`, or None if unknown.
    """
    head = data[:32]
    for offset, magic, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            return name
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    if head[:4] == b"PAR1":
        return "PARQUET"
    if len(data) >= 262 and data[257:262] == b"ustar":
        return "TAR"
    stripped = head.lstrip()
    if stripped.startswith((b"<svg", b"<?xml")) and b"<svg" in data[:4096]:
        return "SVG"
    return None


def extension_matches(fmt: str, name: str) -> bool:
    """True if `name`'s extension is one we expect for `fmt` (or there is no extension to contradict it)."""
    dot = name.rfind(".")
    if dot <= name.rfind("/"):
        return True
    ext = name[dot:].lower()
    return ext in _EXTENSIONS.get(fmt, set())


class ImageRejected(Exception):
    """An input that cannot become a sample; `reason` is a stable machine-readable code for the ledger."""

    def __init__(self, reason: str, message: str, **details: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.details = {"message": message, **details}
        self.metadata: dict | None = None  # set when the image decoded and only a policy (size) refused it


@dataclass(frozen=True)
class ProbeLimits:
    """Safety limits applied while decoding untrusted bytes."""

    max_pixels: int = 89_478_485
    """Largest width*height (per frame) accepted; larger is a `decompression_bomb` (Pillow's default limit)."""
    min_side: int = 64
    """Smallest accepted shorter side in pixels (after EXIF orientation); smaller is `too_small`."""
    max_frames: int = 10_000
    """Most frames counted in an animation before it is rejected as a `decompression_bomb`."""


@dataclass
class ImageFacts:
    """What decoding an image taught us; `notes` name every normalisation a later decode will apply."""

    format: str
    width: int
    height: int
    mode: str
    is_animated: bool
    n_frames: int
    exif_orientation: int | None
    has_icc: bool
    notes: list[str] = field(default_factory=list)
    metadata: dict | None = None
    """Embedded metadata (`curation.metadata.extract_metadata`), when asked for."""
    rgb: Image.Image | None = field(default=None, repr=False)
    decoded: Image.Image | None = field(default=None, repr=False)
    """The first frame as stored (original mode, no orientation applied), for checks of the raw pixels."""
    """The first frame normalised to 8-bit RGB, as every later stage sees it."""


def _classify_decode_error(exc: BaseException) -> ImageRejected:
    message = f"{type(exc).__name__}: {exc}"
    text = str(exc).lower()
    if isinstance(exc, Image.DecompressionBombError) or "decompressed data too large" in text:
        return ImageRejected("decompression_bomb", message)
    if isinstance(exc, EOFError) or "truncated" in text or "premature end" in text or "unexpected end" in text:
        return ImageRejected("truncated", message)
    return ImageRejected("undecodable", message)


def probe_image(data: bytes, limits: ProbeLimits = ProbeLimits(), with_metadata: bool = False) -> ImageFacts:
    """Decode untrusted bytes fully and describe them, or raise `ImageRejected` with a specific reason.

    The pixel limit is checked from the header before any pixel is decoded. The first frame is decoded completely
    (so truncation is caught) and then normalised to RGB, proving that every later stage can use the image.

    Args:
        data: the original file bytes.
        limits: pixel, size and frame limits.
        with_metadata: also extract the embedded metadata (EXIF, XMP, IPTC, text chunks) from the same decode.

    Returns:
        `ImageFacts`; `width`/`height` are as displayed, i.e. after EXIF orientation.

    Raises:
        ImageRejected: `empty`, `not_an_image`, `unsupported_format`, `decompression_bomb`, `truncated`,
            `undecodable` or `too_small`.
    """
    if not data:
        raise ImageRejected("empty", "zero bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise ImageRejected("not_an_image", "no known image signature in the first bytes", head=data[:16].hex())
    if fmt not in IMAGE_FORMATS:
        raise ImageRejected("not_an_image" if fmt in {"TAR", "PARQUET"} else "unsupported_format",
                            f"{fmt} data is not a raster image this pipeline decodes", detected=fmt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            if fmt in {"AVIF", "HEIF"}:
                raise ImageRejected("unsupported_format", f"no decoder for {fmt} installed", detected=fmt) from exc
            raise ImageRejected("undecodable", f"{fmt} signature but Pillow cannot parse the header") from exc
        except Exception as exc:  # Pillow raises many types on hostile headers
            raise _classify_decode_error(exc) from exc
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageRejected("undecodable", f"invalid dimensions {width}x{height}")
        if width * height > limits.max_pixels:
            raise ImageRejected("decompression_bomb", f"{width}x{height} exceeds the pixel limit",
                                pixels=width * height, max_pixels=limits.max_pixels)
        try:
            n_frames = _count_frames(img, limits)
            img.seek(0)
            img.load()
        except ImageRejected:
            raise
        except Exception as exc:
            raise _classify_decode_error(exc) from exc
        orientation = _exif_orientation(img)
        notes = _normalisation_notes(img, n_frames, orientation)
        try:
            rgb = to_rgb(img, orientation)
        except Exception as exc:
            raise ImageRejected("undecodable", f"cannot normalise mode {img.mode} to RGB: {exc}") from exc
        metadata = extract_metadata(img) if with_metadata else None
    facts = ImageFacts(
        format=fmt,
        width=rgb.width,
        height=rgb.height,
        mode=img.mode,
        is_animated=n_frames > 1,
        n_frames=n_frames,
        exif_orientation=orientation,
        has_icc=bool(img.info.get("icc_profile")),
        notes=notes,
        metadata=metadata,
        rgb=rgb,
        decoded=img,
    )
    if min(facts.width, facts.height) < limits.min_side:
        message = f"{facts.width}x{facts.height} is below the {limits.min_side} px minimum"
        rejection = ImageRejected("too_small", message, width=facts.width, height=facts.height,
                                  min_side=limits.min_side)
        rejection.metadata = metadata
        raise rejection
    return facts


def _count_frames(img: Image.Image, limits: ProbeLimits) -> int:
    declared = getattr(img, "n_frames", 1)
    if declared > limits.max_frames:
        raise ImageRejected("decompression_bomb", f"{declared} frames exceed the {limits.max_frames} limit",
                            n_frames=declared)
    return int(declared)


def _exif_orientation(img: Image.Image) -> int | None:
    try:
        value = img.getexif().get(0x0112)
    except Exception:  # a broken EXIF block must not reject an otherwise valid image
        return None
    return int(value) if isinstance(value, int) and 1 <= value <= 8 else None


def _normalisation_notes(img: Image.Image, n_frames: int, orientation: int | None) -> list[str]:
    notes = []
    mode = img.mode
    if mode == "CMYK":
        notes.append("cmyk_converted_to_rgb")
    elif mode.startswith("I;16") or mode in {"I", "F"}:
        notes.append("high_bit_depth_scaled_to_8bit")
    elif mode in {"P", "PA"} and ("transparency" in img.info or mode == "PA"):
        notes.append("palette_transparency_composited_on_white")
    elif mode in {"RGBA", "LA", "La", "RGBa"}:
        notes.append("alpha_composited_on_white")
    elif mode not in {"RGB", "L", "1", "P"}:
        notes.append(f"mode_{mode}_converted_to_rgb")
    if n_frames > 1:
        notes.append("animated_first_frame_used")
    if orientation and orientation != 1:
        notes.append(f"exif_orientation_{orientation}_applied")
    return notes


def to_rgb(img: Image.Image, orientation: int | None = None) -> Image.Image:
    """Normalise a decoded image (first frame) to 8-bit RGB as displayed.

    High-bit-depth data is rescaled rather than clipped, transparency is composited on white and EXIF orientation
    is applied.

    Args:
        img: an opened Pillow image.
        orientation: the EXIF orientation tag if already read (read from `img` when None).

    Returns:
        A new RGB image.
    """
    mode = img.mode
    if mode.startswith("I;16") or mode in {"I", "F"}:
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255) else 255.0
        if mode == "F":
            lo, hi = float(arr.min(initial=0.0)), float(arr.max(initial=1.0))
            arr, peak = arr - lo, max(hi - lo, 1e-12)
        out = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode in {"P", "PA"} and ("transparency" in img.info or mode == "PA"):
        out = _flatten(img.convert("RGBA"))
    elif mode in {"RGBA", "LA", "La", "RGBa"}:
        out = _flatten(img.convert("RGBA"))
    elif mode == "RGB":
        out = img  # already what every stage wants; a copy would cost as much as a second decode pass
    else:
        out = img.convert("RGB")
    if out.mode != "RGB":
        out = out.convert("RGB")
    if orientation is None:
        orientation = _exif_orientation(img)
    if orientation and orientation != 1:
        out = _apply_orientation(out, orientation)
    return out


def _flatten(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


_TRANSPOSE = {
    2: [Image.Transpose.FLIP_LEFT_RIGHT],
    3: [Image.Transpose.ROTATE_180],
    4: [Image.Transpose.FLIP_TOP_BOTTOM],
    5: [Image.Transpose.TRANSPOSE],
    6: [Image.Transpose.ROTATE_270],
    7: [Image.Transpose.TRANSVERSE],
    8: [Image.Transpose.ROTATE_90],
}


def _apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    for op in _TRANSPOSE.get(orientation, []):
        img = img.transpose(op)
    return img


def load_rgb(data: bytes, limits: ProbeLimits = ProbeLimits(min_side=1)) -> Image.Image:
    """Decode stored sample bytes into the RGB image every stage works on (first frame, oriented, flattened).

    Args:
        data: the `image` column value of a `source_images` row.
        limits: decoding limits (the minimum side is not enforced again by default).

    Returns:
        An 8-bit RGB Pillow image.

    Raises:
        ImageRejected: if the bytes no longer decode (they did at ingest, so this signals corrupted storage).
    """
    rgb = probe_image(data, limits).rgb
    assert rgb is not None
    return rgb


def oriented_size(data: bytes) -> tuple[int, int]:
    """(width, height) of stored sample bytes as `load_rgb` would return them (EXIF orientation applied), read from
    the header alone: a stage that only needs the size to refuse an image does not decode it.

    Raises:
        ImageRejected: if the header no longer parses (the bytes passed ingest, so this signals corrupted storage).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            return (h, w) if _exif_orientation(img) in (5, 6, 7, 8) else (w, h)
        except Exception as exc:
            raise _classify_decode_error(exc) from exc


def load_rgb_reduced(data: bytes, min_short_side: int) -> Image.Image:
    """Stored sample bytes decoded at a reduced size where the codec can (JPEG DCT scaling by 1/2, 1/4 or 1/8), never
    below `min_short_side` on the shorter side; oriented and flattened like `load_rgb`.

    A stage that works at 256 px (hashes, the embedding) need not decode a 24 MP JPEG whole: the DCT-scaled decode
    reads the same file at an eighth of the pixels. Other formats decode whole (`load_rgb`).

    Args:
        data: the `image` column value of a `source_images` row (it passed ingest's limits).
        min_short_side: the smallest shorter side the caller needs.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            img = Image.open(io.BytesIO(data))
            if img.format != "JPEG" or min(img.size) < 2 * min_short_side:
                return load_rgb(data)
            w, h = img.size
            factor = min_short_side / min(w, h)
            img.draft(None, (math.ceil(w * factor), math.ceil(h * factor)))
            img.load()
            return to_rgb(img, _exif_orientation(img))
        except ImageRejected:
            raise
        except Exception as exc:
            raise _classify_decode_error(exc) from exc


__all__ = [
    "IMAGE_EXTENSIONS",
    "IMAGE_FORMATS",
    "ImageFacts",
    "ImageRejected",
    "ProbeLimits",
    "extension_matches",
    "load_rgb",
    "oriented_size",
    "load_rgb_reduced",
    "probe_image",
    "sniff_format",
    "to_rgb",
]
