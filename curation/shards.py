"""Training shards: aspect-ratio buckets of about a curriculum stage's pixel area, and the resize into them.

A stage of size S has buckets (w, h), both multiples of `multiple`, with w*h close to S*S and aspect ratios up to
`max_aspect`. An image goes to the bucket nearest its aspect ratio (in log space), is scaled to cover it with a
Lanczos filter (reducing in steps for large downscales) and centre-cropped; an image that would need more than
`max_upscale` is refused for that stage rather than blown up into a blurry sample. The size is read from the header
and a JPEG is decoded DCT-scaled to the smallest size that still covers its bucket, so a stage never decodes more
pixels than it stores (and refuses a too-small image without decoding it).
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import pyarrow as pa
from PIL import Image

from curation.decisions import Decision
from curation.image_io import load_rgb_reduced, oriented_size

SHARD_CODE_VERSION = "shards-2"
VARIANT_KINDS = ("tags", "short", "medium", "long")

SHARD_SCHEMA = pa.schema([
    pa.field("sample_id", pa.string(), nullable=False),
    pa.field("source_uri", pa.string(), nullable=False),
    pa.field("license", pa.string()),
    pa.field("bucket", pa.string(), nullable=False),  # "WxH"
    pa.field("width", pa.int32(), nullable=False),
    pa.field("height", pa.int32(), nullable=False),
    pa.field("image", pa.binary(), nullable=False),
    *[pa.field(f"caption_{k}", pa.string(), nullable=False) for k in VARIANT_KINDS],
    pa.field("sample_weight", pa.float32(), nullable=False),
    pa.field("caption_backend", pa.string()),
    pa.field("stage", pa.string(), nullable=False),
])


@dataclass(frozen=True)
class ShardConfig:
    """How one curriculum stage's shards are cut."""

    size: int = 256
    """The stage's side length: buckets hold about size*size pixels."""
    multiple: int | None = None
    """Bucket sides are multiples of this (a multiple of the DiT's patch size); None: size/16, at least 8."""
    max_aspect: float = 4.0
    """Widest bucket aspect ratio (matches the artifact filter's extreme-aspect bound)."""
    max_upscale: float = 1.34
    """Largest scale factor accepted; above it the image is too small for the stage (1/0.75: eligibility's bound)."""
    image_format: str = "JPEG"
    """Encoding of the stored pixels: JPEG (quality below) or PNG (lossless)."""
    quality: int = 95
    """JPEG quality."""
    target_shard_mb: float = 256.0
    """Target shard size; rows per shard are estimated from the stage's pixel area."""

    def side_multiple(self) -> int:
        return self.multiple or max(8, self.size // 16)

    def rows_per_shard(self) -> int:
        bytes_per_image = self.size * self.size * (0.5 if self.image_format == "JPEG" else 2.0)
        return max(1, int(self.target_shard_mb * 2**20 / bytes_per_image))


def aspect_buckets(size: int, multiple: int = 16, max_aspect: float = 4.0) -> list[tuple[int, int]]:
    """Buckets (w, h) of about size*size pixels, from the tallest to the widest, each side a multiple of `multiple`."""
    area = size * size
    buckets = set()
    h = multiple
    while h <= size * math.sqrt(max_aspect) + multiple:
        w = max(multiple, round(area / h / multiple) * multiple)
        aspect = w / h
        if 1 / max_aspect <= aspect <= max_aspect and abs(w * h - area) <= 0.25 * area:
            buckets.update({(w, h), (h, w)})
        h += multiple
    buckets.add((size // multiple * multiple or multiple,) * 2)
    by_aspect: dict[float, tuple[int, int]] = {}
    for b in sorted(buckets, key=lambda b: abs(b[0] * b[1] - area)):  # one bucket per aspect: the closest area
        by_aspect.setdefault(round(b[0] / b[1], 6), b)
    return sorted(by_aspect.values(), key=lambda b: b[0] / b[1])


def nearest_bucket(width: int, height: int, buckets: list[tuple[int, int]]) -> tuple[int, int]:
    target = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - target), -b[0] * b[1]))


def fit_to_bucket(img: Image.Image, bucket: tuple[int, int]) -> tuple[Image.Image, float]:
    """Scale to cover the bucket and centre-crop; returns the image and the scale factor used."""
    bw, bh = bucket
    scale = max(bw / img.width, bh / img.height)
    w, h = max(bw, round(img.width * scale)), max(bh, round(img.height * scale))
    resized = img.resize((w, h), Image.Resampling.LANCZOS, reducing_gap=3.0 if scale < 0.5 else None)
    left, top = (w - bw) // 2, (h - bh) // 2
    return resized.crop((left, top, left + bw, top + bh)), scale


def encode(img: Image.Image, config: ShardConfig) -> bytes:
    out = io.BytesIO()
    if config.image_format == "JPEG":
        img.save(out, "JPEG", quality=config.quality, subsampling=0 if config.quality >= 90 else 2)
    else:
        img.save(out, config.image_format, optimize=False)
    return out.getvalue()


def prepare(data: bytes, config: ShardConfig, buckets: list[tuple[int, int]]) -> tuple[dict | None, str | None, dict]:
    """(row fields {bucket, width, height, image}, or None with a refusal reason, details) for one image."""
    width, height = oriented_size(data)
    bucket = nearest_bucket(width, height, buckets)
    scale = max(bucket[0] / width, bucket[1] / height)
    details = {"source_size": [width, height], "short_side": min(width, height),
               "bucket": f"{bucket[0]}x{bucket[1]}", "scale": round(scale, 4), "max_upscale": config.max_upscale}
    if scale > config.max_upscale:  # refused from the header: no decode
        return None, "too_small_for_stage", details
    # decoded only as large as the bucket needs (a 24 MP JPEG for the 256 stage: DCT-scaled by 1/8, not whole)
    img = load_rgb_reduced(data, math.ceil(min(width, height) * min(scale, 1.0)))
    fitted, _ = fit_to_bucket(img, bucket)
    return ({"bucket": f"{bucket[0]}x{bucket[1]}", "width": bucket[0], "height": bucket[1],
             "image": encode(fitted, config)}, None, details)


def ineligible_decision(sample_id: str, source_uri: str, stage: str, refusal: str | dict | None) -> Decision:
    """The shard-stage drop of a curated sample the exclusion filters found ineligible for `stage`.

    Args:
        sample_id, source_uri: the sample.
        stage: the curriculum stage key (the shard partition).
        refusal: the `refusal_<size>` value of `exclusion_signals` (JSON or its dict: reason, score, threshold,
            details; `curation.quality.stage_refusal`). None when the signals predate recorded refusals: the drop
            then says `ineligible_for_stage` without a measure rather than inventing one.
    """
    if isinstance(refusal, str):
        refusal = json.loads(refusal)
    if not refusal:
        return Decision(sample_id, source_uri, "shard", "drop", "ineligible_for_stage",
                        details={"stage": stage, "note": "exclusion_signals has no refusal reason: rematerialize"})
    return Decision(sample_id, source_uri, "shard", "drop", refusal["reason"], score=refusal.get("score"),
                    threshold=refusal.get("threshold"), details={"stage": stage, **(refusal.get("details") or {})})
