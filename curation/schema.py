"""Arrow schemas of the tables the pipeline writes (the data contract of DESIGN.md)."""

from __future__ import annotations

import pyarrow as pa

from curation.decisions import DECISIONS_SCHEMA

SOURCE_IMAGES_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # hex sha256 of the original bytes
        pa.field("source", pa.string(), nullable=False),  # the source-drop partition key
        pa.field("source_uri", pa.string(), nullable=False),  # file, or container#member
        pa.field("image", pa.binary(), nullable=False),  # the original bytes, untouched
        pa.field("byte_size", pa.int64(), nullable=False),
        pa.field("format", pa.string(), nullable=False),  # from magic bytes, never the extension
        pa.field("width", pa.int32(), nullable=False),  # as displayed (EXIF orientation applied)
        pa.field("height", pa.int32(), nullable=False),
        pa.field("mode", pa.string(), nullable=False),  # Pillow mode of the stored pixels
        pa.field("is_animated", pa.bool_(), nullable=False),
        pa.field("n_frames", pa.int32(), nullable=False),
        pa.field("exif_orientation", pa.int8()),
        pa.field("has_icc", pa.bool_(), nullable=False),
        pa.field("licence", pa.string()),  # from sidecar fields or the drop's configured licence
        pa.field("metadata", pa.string(), nullable=False),  # JSON: embedded (exif/xmp/iptc/text) and sidecar
        pa.field("notes", pa.list_(pa.string()), nullable=False),  # normalisations a decode applies
    ]
)

__all__ = ["DECISIONS_SCHEMA", "SOURCE_IMAGES_SCHEMA"]
