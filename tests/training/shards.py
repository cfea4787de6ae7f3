"""Tiny training shards in the `training_shards` schema, built with pyarrow (PNG bytes of synthetic images)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

COLORS = [(220, 40, 40), (40, 200, 60), (40, 80, 220), (230, 200, 40), (200, 60, 200), (40, 200, 200)]


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A smooth, learnable image: a coloured disc on a gradient background, different per seed."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height
    radius = min(width, height) * 0.25
    bg = np.stack([x / width * 120, y / height * 120, np.full_like(x, 60.0)], -1)
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < radius**2)[..., None]
    img = np.where(disc, np.array(COLORS[seed % len(COLORS)], np.float32), bg)
    return Image.fromarray(img.clip(0, 255).astype(np.uint8), "RGB")


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def write_shard(path: str | Path, sizes: list[tuple[int, int]], start_seed: int = 0,
                weights: list[float] | None = None, captions: list[dict[str, str]] | None = None) -> list[str]:
    """One Parquet shard with one row per (width, height); returns its sample ids."""
    rows: dict[str, list] = {k: [] for k in ["sample_id", "source_uri", "license", "bucket", "width", "height",
                                             "image", "caption_tags", "caption_short", "caption_medium",
                                             "caption_long", "sample_weight"]}
    for i, (w, h) in enumerate(sizes):
        seed = start_seed + i
        data = png(synthetic_image(w, h, seed))
        sid = hashlib.sha256(data).hexdigest()
        cap = (captions[i] if captions else
               {"tags": f"disc, color{seed % len(COLORS)}", "short": f"a disc {seed}",
                "medium": f"a coloured disc number {seed} on a gradient", "long": ""})
        for key, value in [("sample_id", sid), ("source_uri", f"file:///img{seed}.png"), ("license", "cc0"),
                           ("bucket", f"{w}x{h}"), ("width", w), ("height", h), ("image", data),
                           ("caption_tags", cap.get("tags", "")), ("caption_short", cap.get("short", "")),
                           ("caption_medium", cap.get("medium", "")), ("caption_long", cap.get("long", "")),
                           ("sample_weight", weights[i] if weights else 1.0)]:
            rows[key].append(value)
    schema = pa.schema([("sample_id", pa.string()), ("source_uri", pa.string()), ("license", pa.string()),
                        ("bucket", pa.string()), ("width", pa.int32()), ("height", pa.int32()),
                        ("image", pa.binary()), ("caption_tags", pa.string()), ("caption_short", pa.string()),
                        ("caption_medium", pa.string()), ("caption_long", pa.string()),
                        ("sample_weight", pa.float32())])
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(rows, schema=schema), str(path))
    return rows["sample_id"]


def write_shard_dir(root: str | Path, n_shards: int = 2, per_shard: int = 4,
                    sizes: list[tuple[int, int]] | None = None) -> Path:
    """`root/part-NNNNN.parquet` shards (plus a `_SUCCESS` marker), images cycling through `sizes`."""
    root = Path(root)
    sizes = sizes or [(32, 32)]
    for s in range(n_shards):
        write_shard(root / f"part-{s:05d}.parquet", [sizes[i % len(sizes)] for i in range(per_shard)],
                    start_seed=s * per_shard)
    (root / "_SUCCESS").write_text("")
    return root
