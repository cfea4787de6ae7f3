"""Image features: perceptual hashes, an embedding, the NSFW score and a dedup verification thumbnail, for a batch
of `source_images` rows.

`FeatureExtractor` is a stage in the datatrove sense: `setup()` loads the model once per worker, `process_batch`
turns an Arrow table with an `image` column into a features table (no source bytes; a ~5 KB JPEG thumbnail that
dedup verifies candidate pairs on).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from curation.dedup_verify import encode_thumbnail
from curation.embedding import Embedder, EmbeddingConfig, load_embedder
from curation.hashing import perceptual_hashes
from curation.image_io import load_rgb_reduced
from curation.stage import StageResources

FEATURES_CODE_VERSION = "features-3"  # -2: hashes and embedding from one DCT-reduced decode; -3: dedup thumbnail
HASH_COLUMNS = ("phash", "dhash")
PASS_THROUGH = ("sample_id", "source", "source_uri", "width", "height", "byte_size", "format")
EMBED_SIDE = 256
"""Images are reduced to about this side before hashing and embedding (both models look at 224-256 px)."""


def features_schema(dim: int) -> pa.Schema:
    """Schema of `image_features` for an embedding of `dim` dimensions."""
    return pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("source", pa.string(), nullable=False),
            pa.field("source_uri", pa.string(), nullable=False),
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("byte_size", pa.int64(), nullable=False),
            pa.field("format", pa.string(), nullable=False),
            *[pa.field(name, pa.uint64(), nullable=False) for name in HASH_COLUMNS],
            pa.field("phash_orientations", pa.list_(pa.uint64(), 8), nullable=False),
            pa.field("embedding", pa.list_(pa.float16(), dim), nullable=False),
            pa.field("nsfw_score", pa.float32(), nullable=False),
            pa.field("embedding_model", pa.string(), nullable=False),
            # dedup verifies a candidate pair on these pixels (curation.dedup_verify): ~5 KB, from the same decode
            pa.field("verify_thumbnail", pa.binary(), nullable=False),
        ]
    )


@dataclass(frozen=True)
class FeatureConfig:
    """How features are computed."""

    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)
    """The embedding backend."""
    resources: StageResources = field(default_factory=lambda: StageResources(num_cpus=1.0, batch_size=32))
    """Per-actor resources; `num_gpus` > 0 for the open_clip backend on GPU nodes."""


def _reduce(img, side: int = EMBED_SIDE):
    """A copy at most ~2x `side` (cheap box reduction first, so huge images do not dominate resize time)."""
    factor = min(img.width, img.height) // (2 * side)
    if factor >= 2:
        img = img.reduce(factor)
    return img


class FeatureExtractor:
    """Hashes + embedding + NSFW score for `source_images` rows."""

    name = "image_features"

    def __init__(self, config: FeatureConfig) -> None:
        self.config = config
        self.resources = config.resources
        self.embedder: Embedder | None = None

    def setup(self) -> None:
        """Load the embedding model (once per actor)."""
        self.embedder = load_embedder(self.config.embedding)

    def empty_table(self) -> pa.Table:
        """A features table with no rows (the schema depends on the loaded model's dimension)."""
        if self.embedder is None:
            self.setup()
        assert self.embedder is not None
        return features_schema(self.embedder.dim).empty_table()

    def process_batch(self, table: pa.Table) -> pa.Table:
        """Features of a batch of `source_images` rows (which must include the `image` column)."""
        if self.embedder is None:
            self.setup()
        assert self.embedder is not None
        # one reduced decode per image serves the hashes and the embedding
        images = [_reduce(load_rgb_reduced(data, 2 * EMBED_SIDE)) for data in table.column("image").to_pylist()]
        hashes = [perceptual_hashes(img) for img in images]
        embeddings, nsfw = self.embedder.embed(images)
        dim = self.embedder.dim
        schema = features_schema(dim)
        columns = {name: table.column(name) for name in PASS_THROUGH}
        for name in HASH_COLUMNS:
            columns[name] = pa.array([h[name] for h in hashes], pa.uint64())
        orientations = pa.array([v for h in hashes for v in h["phash_orientations"]], pa.uint64())
        columns["phash_orientations"] = pa.FixedSizeListArray.from_arrays(orientations, 8)
        flat = pa.array(embeddings.astype(np.float16).reshape(-1), pa.float16())
        columns["embedding"] = pa.FixedSizeListArray.from_arrays(flat, dim)
        columns["nsfw_score"] = pa.array(nsfw.astype(np.float32), pa.float32())
        columns["embedding_model"] = pa.array([self.embedder.name] * table.num_rows, pa.string())
        columns["verify_thumbnail"] = pa.array([encode_thumbnail(img) for img in images], pa.binary())
        return pa.table(columns, schema=schema)


def orientation_matrix(table: pa.Table) -> np.ndarray:
    """The `phash_orientations` column as a uint64 (n, 8) matrix (column 0 is the upright hash)."""
    column = table.column("phash_orientations").combine_chunks()
    return column.values.to_numpy(zero_copy_only=False).astype(np.uint64).reshape(-1, 8)


def embedding_matrix(table: pa.Table) -> np.ndarray:
    """The `embedding` column as a float32 (n, dim) matrix."""
    column = table.column("embedding").combine_chunks()
    if len(column) == 0:
        return np.empty((0, 0), np.float32)
    dim = column.type.list_size
    return column.values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dim)
