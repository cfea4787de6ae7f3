"""The prompt_variants table: inline JPEG thumbnails and the four variants, escaped for markdown."""

from __future__ import annotations

import base64
import io

from PIL import Image

from captioning.report import thumbnail_data_uri, variants_table_markdown
from tests.captioning.conftest import solid


def test_thumbnail_is_a_small_jpeg_data_uri():
    uri = thumbnail_data_uri(solid(400, 200, (10, 200, 30)).convert("RGBA"), side=64)
    assert uri.startswith("data:image/jpeg;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert img.format == "JPEG" and img.size == (64, 32)
    buf = io.BytesIO()
    solid(50, 80, (1, 2, 3)).save(buf, "PNG")
    small = base64.b64decode(thumbnail_data_uri(buf.getvalue()).split(",")[1])
    assert Image.open(io.BytesIO(small)).size == (50, 80)  # never upscaled


def test_table_has_a_row_per_sample_with_thumbnail_and_variants():
    rows = [{"sample_id": f"{i:064d}", "tags": "a, b", "short": "A | pipe", "medium": "M.", "long": "L " * 300,
             "long_is_distinct": True} for i in range(14)]
    rows[1].update(long="", long_is_distinct=False, long_note="medium holds the whole caption")
    images = {rows[0]["sample_id"]: solid(30, 30, (200, 0, 0)), rows[1]["sample_id"]: solid(30, 30, (0, 0, 200))}
    table = variants_table_markdown(rows, images)
    lines = table.splitlines()
    assert lines[0] == "| image | sample | tags | short | medium | long |" and len(lines) == 2 + 12
    assert lines[2].startswith(f"| ![{'0' * 12}](data:image/jpeg;base64,")
    assert "A \\| pipe" in lines[2] and lines[2].count(" | ") == 5  # the pipe is escaped, columns stay six
    assert "(none: medium holds the whole caption)" in lines[3]
    assert lines[4].startswith("| - |") and "..." in lines[4]  # no image; long text cut in the cell only
    assert variants_table_markdown([], {}) == ""
