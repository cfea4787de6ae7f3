"""Parquet manifests: a row per input, with the image's bytes in a column or a path to the image.

A path in a manifest is data from the crawl, not an instruction: it is read only if it resolves (symlinks followed)
inside the drop's root or a root the operator listed, and only if it is a regular file within the size cap.
Anything else is one ledger row (`outside_source`, `not_a_regular_file`, `remote_path_not_fetched`, ...) that names
the path as written and nothing of the file.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from curation.metadata import jsonable
from curation.source_access import (
    OutsideSource,
    RawItem,
    ReadLimits,
    ReadRefused,
    fs_of,
    is_remote_fetch,
    read_source_file,
    resolve_reference,
)

BYTES_COLUMNS = ("image", "image_bytes", "bytes", "jpg", "png", "webp", "content", "data")
PATH_COLUMNS = ("path", "file", "file_name", "filename", "image_path", "filepath", "local_path")


def _pick_column(schema: pa.Schema, names: tuple[str, ...], types: tuple) -> str | None:
    lower = {f.name.lower(): f for f in schema}
    for n in names:
        f = lower.get(n)
        if f is not None and any(t(f.type) for t in types):
            return f.name
    return None


def read_manifest(uri: str, container: str, row_groups: tuple[int, ...], roots: tuple[str, ...],
                  limits: ReadLimits) -> Iterator[RawItem]:
    """The rows of some row groups of one manifest as `RawItem`s.

    Args:
        uri: the manifest.
        container: its path relative to the drop root.
        row_groups: the row groups of this unit; `(-1,)` marks a manifest the planner could not open.
        roots: where paths in it may point (the drop's root and the operator's `allowed_roots`).
        limits: reading limits.
    """
    fs, path = fs_of(uri)
    if row_groups == (-1,):
        try:
            with fs.open(path, "rb") as f:
                pq.read_metadata(f)
            error = "unknown error"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        yield RawItem(f"{uri}#<manifest>", container, reason="corrupt_manifest", details={"error": error})
        return
    manifest_dir = posixpath.dirname(uri)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(min(row_groups, default=0)))
        bytes_col = _pick_column(schema, BYTES_COLUMNS, (pa.types.is_binary, pa.types.is_large_binary,
                                                        pa.types.is_struct))
        path_col = _pick_column(schema, PATH_COLUMNS, (pa.types.is_string, pa.types.is_large_string))
        row = first_row
        for g in row_groups:
            try:
                records = pf.read_row_group(g).to_pylist()
            except Exception as exc:  # a corrupt row group loses its rows, recorded; the others are read
                n = pf.metadata.row_group(g).num_rows
                yield RawItem(f"{uri}#rows-{row}-{row + n - 1}", container, reason="corrupt_manifest",
                              details={"error": f"{type(exc).__name__}: {exc}", "row_group": g, "rows": n})
                row += n
                continue
            for record in records:
                yield manifest_item(uri, manifest_dir, row, record, bytes_col, path_col, roots, limits)
                row += 1


def manifest_item(uri: str, manifest_dir: str, row: int, record: dict[str, Any], bytes_col: str | None,
                  path_col: str | None, roots: tuple[str, ...], limits: ReadLimits) -> RawItem:
    """One manifest row as a `RawItem`: its bytes, the contained file it names, or why neither."""
    member_uri = f"{uri}#{row}"
    data = record.get(bytes_col) if bytes_col else None
    rel_path = record.get(path_col) if path_col else None
    if isinstance(data, dict):  # Hugging Face `Image` feature: {"bytes": ..., "path": ...}
        rel_path = rel_path or data.get("path")
        data = data.get("bytes")
    sidecar = {k: jsonable(v, [], k) for k, v in record.items()
               if k not in (bytes_col, path_col) and not isinstance(v, bytes | bytearray)}
    name = rel_path if isinstance(rel_path, str) and rel_path else f"row-{row}"
    if data is not None:
        if len(data) > limits.max_file_bytes:
            return RawItem(member_uri, name, reason="file_too_large",
                           details={"bytes": len(data), "max_file_bytes": limits.max_file_bytes})
        return RawItem(member_uri, name, data=bytes(data), sidecar=sidecar)
    if not isinstance(rel_path, str) or not rel_path:
        return RawItem(member_uri, name, reason="no_image_in_row",
                       details={"message": "the row has neither image bytes nor a path",
                                "bytes_column": bytes_col, "path_column": path_col})
    shown = jsonable(rel_path, [])
    if is_remote_fetch(rel_path):
        return RawItem(member_uri, name, reason="remote_path_not_fetched",
                       details={"path": shown, "message": "the pipeline never downloads; fetch the drop first"})
    target = resolve_reference(rel_path, manifest_dir)
    try:
        if target is None:
            raise OutsideSource("a file:// URI naming another host")
        data = read_source_file(target, limits.max_file_bytes, roots)
    except ReadRefused as exc:
        details = {"path": shown, **exc.details}
        if exc.reason == "outside_source":
            details["message"] = ("the path leaves the drop; list the store it points into under "
                                  "allowed_roots to read it")
        return RawItem(member_uri, name, reason=exc.reason, details=details)
    except FileNotFoundError:
        return RawItem(member_uri, name, reason="missing_file", details={"path": shown})
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        return RawItem(member_uri, name, reason="unreadable", details={"path": shown, "error": str(exc)})
    sidecar["manifest_path"] = shown
    return RawItem(member_uri, name, data=data, sidecar=sidecar)
