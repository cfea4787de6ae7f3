"""What a person looks at in the UI: a dozen samples as thumbnails beside their four prompt variants."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image, ImageOps

THUMB_SIDE = 96
"""Longest side of a thumbnail, in pixels."""
JPEG_QUALITY = 70
"""Small thumbnails keep the materialization metadata light (a dozen is ~30 KB of base64)."""
MAX_CELL_CHARS = 400
"""Longest text shown in one cell (the stored variant is never cut)."""


def thumbnail_data_uri(image: Image.Image | bytes, side: int = THUMB_SIDE) -> str:
    """A small JPEG of an image (PIL image or encoded bytes) as a `data:image/jpeg;base64,...` URI."""
    img = Image.open(io.BytesIO(image)) if isinstance(image, bytes | bytearray) else image
    img = ImageOps.exif_transpose(img)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    img = img.convert("RGB")
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cell(text: Any) -> str:
    text = " ".join(str(text or "").split())
    if len(text) > MAX_CELL_CHARS:
        text = text[: MAX_CELL_CHARS - 3].rstrip() + "..."
    return text.replace("\\", "\\\\").replace("|", "\\|") or "-"


def variants_table_markdown(rows: Sequence[Mapping[str, Any]], images: Mapping[str, Image.Image | bytes],
                            limit: int = 12, side: int = THUMB_SIDE) -> str:
    """A markdown table: thumbnail, sample id and the `tags`, `short`, `medium`, `long` of each sample.

    Args:
        rows: `prompt_variants` rows (`sample_id`, the four variants, `long_is_distinct`, `long_note`).
        images: sample_id -> image bytes or PIL image; rows without an image show '-'.
        limit: most rows shown (the first ones, in the given order).
        side: thumbnail size.

    Returns:
        The table, or '' for no rows. A missing long shows its note instead of a blank.
    """
    lines = ["| image | sample | tags | short | medium | long |", "| --- | --- | --- | --- | --- | --- |"]
    for row in list(rows)[:limit]:
        sid = str(row["sample_id"])
        image = images.get(sid)
        thumb = f"![{sid[:12]}]({thumbnail_data_uri(image, side)})" if image is not None else "-"
        long = row.get("long") or (f"(none: {row.get('long_note')})" if row.get("long_is_distinct") is False else "")
        cells = [row.get("tags"), row.get("short"), row.get("medium"), long]
        lines.append(f"| {thumb} | `{sid[:12]}` | " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""
