"""The `style_embeddings` stage body: style descriptors of a batch of `source_images` rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from curation.decisions import Decision, StageCounts
from curation.features import EMBED_SIDE, _reduce
from curation.image_io import load_rgb_reduced
from curation.style.descriptor import StyleConfig, load_style_embedder

PASS_THROUGH = ("sample_id", "source", "source_uri")


def style_schema(dim: int) -> pa.Schema:
    """Schema of `style_embeddings` for descriptors of `dim` dimensions."""
    return pa.schema([
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("style", pa.list_(pa.float16(), dim), nullable=False),
        pa.field("style_model", pa.string(), nullable=False),
    ])


class StyleExtractor:
    """Loads the style model once per actor; turns `source_images` rows into style rows."""

    def __init__(self, config: StyleConfig) -> None:
        self.config = config
        self.embedder = None

    def setup(self) -> None:
        """Load the model (once per actor)."""
        self.embedder = load_style_embedder(self.config)

    def process(self, table: pa.Table) -> tuple[pa.Table, list[Decision], StageCounts]:
        """Style rows of the decodable images; an undecodable one is dropped with its error (a model failure raises:
        it is a crashed stage, never a missing descriptor)."""
        if self.embedder is None:
            self.setup()
        counts = StageCounts(total=table.num_rows)
        images, keep, decisions = [], [], []
        rows = table.select([*PASS_THROUGH, "image"]).to_pylist()
        for i, row in enumerate(rows):
            try:
                images.append(_reduce(load_rgb_reduced(row["image"], 2 * EMBED_SIDE)))
                keep.append(i)
            except Exception as exc:  # ingest decoded it once; a failure now is this image's, recorded
                decisions.append(Decision(row["sample_id"], row["source_uri"], "style", "drop", "decode_failed",
                                          details={"error": f"{type(exc).__name__}: {exc}"}))
                counts.dropped["decode_failed"] += 1
        style, _ = self.embedder.embed(images)
        counts.kept = len(keep)
        dim = self.embedder.dim
        kept = [rows[i] for i in keep]
        columns = {name: pa.array([r[name] for r in kept], pa.string()) for name in PASS_THROUGH}
        columns["style"] = pa.FixedSizeListArray.from_arrays(
            pa.array(style.astype(np.float16).reshape(-1), pa.float16()), dim)
        columns["style_model"] = pa.array([self.embedder.name] * len(kept), pa.string())
        return pa.table(columns, schema=style_schema(dim)), decisions, counts


def style_matrix(table: pa.Table, column: str = "style") -> np.ndarray:
    """A fixed-size-list float16 column as a float32 (n, dim) matrix."""
    col = table.column(column).combine_chunks()
    if len(col) == 0:
        return np.empty((0, col.type.list_size), np.float32)
    return col.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, col.type.list_size)
