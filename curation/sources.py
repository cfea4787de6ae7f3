"""Source drops -> work units -> raw items (bytes + sidecar fields), without trusting names or paths.

A source drop is a directory tree of images (with optional `<name>.json` / `<name>.txt` sidecars and
`metadata.jsonl` files), WebDataset `.tar` shards (img2dataset layout), Parquet manifests (an image-bytes column or
local paths), or any mix of them. `plan_units` lists the drop on the driver and cuts it into deterministic work
units; `read_unit` runs on a worker and yields one `RawItem` per input. Inputs that are refused before decoding
(hostile member paths, symlinks leaving the root, unreadable or oversized files) are items with a `reason`, so they
reach the ledger like everything else.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from curation.image_io import IMAGE_EXTENSIONS, sniff_format
from curation.metadata import jsonable

log = logging.getLogger(__name__)

SIDECAR_EXTENSIONS = (".json", ".txt")
METADATA_JSONL = "metadata.jsonl"
_CONTAINER_EXTENSIONS = (".tar", ".tar.gz", ".tgz", ".parquet", ".pq")
_BYTES_COLUMNS = ("image", "image_bytes", "bytes", "jpg", "png", "webp", "content", "data")
_PATH_COLUMNS = ("path", "file", "file_name", "filename", "image_path", "filepath", "local_path")
_LICENCE_KEYS = ("licence", "license", "item_licence", "item_license", "LICENSE", "License")


@dataclass(frozen=True)
class ReadLimits:
    """Limits applied while reading a source drop."""

    max_file_bytes: int = 256 << 20
    """Largest single input (file, tar member, manifest cell) read; larger is `file_too_large`."""
    max_sidecar_bytes: int = 1 << 20
    """Largest sidecar (`.json`/`.txt`, `metadata.jsonl` line) parsed; larger is ignored with a note."""
    files_per_unit: int = 256
    """Loose files per work unit (one unit = one Ray task = one Parquet part)."""
    rows_per_unit: int = 1024
    """Manifest rows per work unit."""


@dataclass
class RawItem:
    """One input: bytes to decode, or the reason it was refused before decoding."""

    source_uri: str
    name: str
    data: bytes | None = None
    sidecar: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    reason: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FileEntry:
    """A loose file of a directory drop with the sidecars that belong to it."""

    path: str
    json_sidecar: str | None = None
    txt_sidecar: str | None = None
    jsonl_record: str | None = None  # the JSON text of its metadata.jsonl line
    reason: str | None = None  # refused at planning time (e.g. a symlink leaving the root)
    details: str | None = None


@dataclass(frozen=True)
class WorkUnit:
    """A deterministic slice of a drop: loose files, one tar shard, or row groups of one Parquet manifest."""

    index: int
    kind: str  # "files" | "tar" | "parquet"
    root: str
    files: tuple[FileEntry, ...] = ()
    container: str | None = None
    row_groups: tuple[int, ...] = ()
    fingerprint: str = ""


# --------------------------------------------------------------------------------------------------------- planning


def _fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    fs, path = fsspec.core.url_to_fs(uri)
    return fs, path


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def _local_path(uri: str) -> str:
    return uri[len("file://") :] if uri.startswith("file://") else uri


def _join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if rel else root


def _read_head(uri: str, n: int = 512) -> bytes:
    fs, path = _fs(uri)
    with fs.open(path, "rb") as f:
        return f.read(n)


def _container_kind(uri: str) -> str | None:
    """`tar` / `parquet` when the file's bytes (or, for gzip, its name) say it is one."""
    lower = uri.lower()
    try:
        head = _read_head(uri)
    except OSError:
        return None
    fmt = sniff_format(head)
    if fmt == "TAR":
        return "tar"
    if fmt == "PARQUET":
        return "parquet"
    if head[:2] == b"\x1f\x8b" and lower.endswith((".tar.gz", ".tgz")):
        return "tar"
    return None


def _list_local(root: str) -> tuple[list[tuple[str, int, int]], list[FileEntry]]:
    """Walk a local tree without following directory symlinks; refuse file symlinks that leave the root."""
    real_root = os.path.realpath(root)
    files: list[tuple[str, int, int]] = []
    refused: list[FileEntry] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                target = os.path.realpath(full)
                rel = os.path.relpath(full, root)
                if os.path.commonpath([real_root, target]) != real_root:
                    refused.append(FileEntry(rel, reason="symlink_outside_root",
                                             details=json.dumps({"target": target})))
                else:
                    log.info("not following directory symlink %s (its target is inside the root)", rel)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if os.path.islink(full):
                target = os.path.realpath(full)
                if os.path.commonpath([real_root, target]) != real_root:
                    refused.append(FileEntry(rel, reason="symlink_outside_root",
                                             details=json.dumps({"target": target})))
                    continue
                if not os.path.exists(target):
                    refused.append(FileEntry(rel, reason="unreadable",
                                             details=json.dumps({"error": "dangling symlink"})))
                    continue
            try:
                st = os.stat(full)
            except OSError as exc:
                refused.append(FileEntry(rel, reason="unreadable", details=json.dumps({"error": str(exc)})))
                continue
            files.append((rel, st.st_size, st.st_mtime_ns))
    return files, refused


def _mtime_of(info: dict[str, Any]) -> int:
    mtime = info.get("mtime") or info.get("LastModified") or 0
    return int(mtime.timestamp()) if hasattr(mtime, "timestamp") else int(float(mtime))


def _list_remote(root: str) -> list[tuple[str, int, int]]:
    fs, path = _fs(root)
    found = fs.find(path, withdirs=False, detail=True)
    out = []
    for full, info in sorted(found.items()):
        rel = posixpath.relpath(full, path)
        out.append((rel, int(info.get("size") or 0), _mtime_of(info)))
    return out


def _stem(rel: str) -> str:
    base = posixpath.basename(rel)
    dot = base.rfind(".")
    return posixpath.join(posixpath.dirname(rel), base[:dot] if dot > 0 else base)


def _load_jsonl(root: str, rel: str, limits: ReadLimits) -> tuple[dict[str, str], list[str]]:
    """Map file path (relative to the drop root) -> JSON record text from a `metadata.jsonl` (HF ImageFolder)."""
    base = posixpath.dirname(rel)
    records: dict[str, str] = {}
    problems: list[str] = []
    fs, path = _fs(_join(root, rel))
    with fs.open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if len(raw) > limits.max_sidecar_bytes:
                problems.append(f"line {lineno}: longer than {limits.max_sidecar_bytes} bytes, ignored")
                continue
            try:
                record = json.loads(raw.decode("utf-8", errors="replace"))
            except json.JSONDecodeError as exc:
                problems.append(f"line {lineno}: invalid JSON ({exc.msg})")
                continue
            if not isinstance(record, dict):
                problems.append(f"line {lineno}: not a JSON object")
                continue
            name = next((record[k] for k in ("file_name", "file", "path", "filename")
                         if isinstance(record.get(k), str)), None)
            if name is None:
                problems.append(f"line {lineno}: no file_name/file/path field")
                continue
            records[posixpath.normpath(posixpath.join(base, name))] = json.dumps(record)
    return records, problems


def plan_units(source: str, limits: ReadLimits = ReadLimits()) -> list[WorkUnit]:
    """Cut a source drop into deterministic work units (same drop, same units, same order).

    Args:
        source: a directory, a `.tar` shard or a Parquet manifest; a local path or an fsspec URI.
        limits: reading limits (unit sizes among them).

    Returns:
        The work units; each carries a fingerprint of what it covers so a rerun can tell a finished unit from a
        stale one.

    Raises:
        FileNotFoundError: the source does not exist.
    """
    fs, path = _fs(source)
    if not fs.exists(path):
        raise FileNotFoundError(f"source drop not found: {source}")
    if not fs.isdir(path):
        kind = _container_kind(source)
        parent = posixpath.dirname(source.rstrip("/")) or "."
        rel = posixpath.basename(source.rstrip("/"))
        if kind is None:  # a single loose file is a drop of one
            return _file_units(parent, [(rel, 0, 0)], [], limits)
        info = fs.info(path)
        return _container_units(parent, [(rel, kind, int(info.get("size") or 0), str(info.get("mtime", "")))], 0,
                                limits)

    root = source.rstrip("/")
    if _is_local(root):
        listing, refused = _list_local(_local_path(root))
    else:
        listing, refused = _list_remote(root), []
    names = {rel for rel, _, _ in listing}
    stems_with_media: dict[str, str] = {}
    containers: list[tuple[str, str, int, str]] = []
    loose: list[tuple[str, int, int]] = []
    jsonl_records: dict[str, str] = {}
    jsonl_problems: dict[str, list[str]] = {}
    jsonl_owner: dict[str, str] = {}
    for rel, size, mtime in listing:
        lower = rel.lower()
        if posixpath.basename(lower) == METADATA_JSONL:
            recs, issues = _load_jsonl(root, rel, limits)
            jsonl_records.update(recs)
            jsonl_owner.update(dict.fromkeys(recs, rel))
            jsonl_problems.setdefault(rel, []).extend(issues)
            continue
        ext = posixpath.splitext(lower)[1]
        if lower.endswith(_CONTAINER_EXTENSIONS) or (ext not in IMAGE_EXTENSIONS and ext not in SIDECAR_EXTENSIONS):
            kind = _container_kind(_join(root, rel))
            if kind is not None:
                containers.append((rel, kind, size, str(mtime)))
                continue
        loose.append((rel, size, mtime))
        if ext not in SIDECAR_EXTENSIONS:
            stems_with_media[_stem(rel)] = rel
    # Sidecars belong to the non-sidecar file with the same stem; the rest are inputs of their own.
    entries: list[FileEntry] = []
    fingerprint_rows: list[tuple[str, int, int]] = []
    for rel, size, mtime in loose:
        ext = posixpath.splitext(rel.lower())[1]
        if ext in SIDECAR_EXTENSIONS and _stem(rel) in stems_with_media:
            continue
        stem = _stem(rel)
        json_sc = next((c for c in (stem + ".json", stem + ".JSON") if c in names and c != rel), None)
        txt_sc = next((c for c in (stem + ".txt", stem + ".TXT") if c in names and c != rel), None)
        entries.append(FileEntry(rel, json_sc, txt_sc, jsonl_records.get(posixpath.normpath(rel))))
        fingerprint_rows.append((rel, size, mtime))
    matched = {posixpath.normpath(e.path) for e in entries}
    for key in sorted(set(jsonl_records) - matched):
        jsonl_problems[jsonl_owner[key]].append(f"record for {key}: no such file in the drop")
    # A metadata.jsonl with unusable lines is an input partly dropped: it gets its own ledger row.
    problems = [FileEntry(rel, reason="invalid_sidecar_lines", details=json.dumps({"problems": issues}))
                for rel, issues in sorted(jsonl_problems.items()) if issues]
    for rel, issues in jsonl_problems.items():
        for issue in issues:
            log.warning("%s: %s", rel, issue)
    sizes = {rel: (size, mtime) for rel, size, mtime in listing}
    for entry in entries:
        for sc in (entry.json_sidecar, entry.txt_sidecar):
            if sc:
                fingerprint_rows.append((sc, *sizes[sc]))
    units = _file_units(root, [(e.path, *sizes[e.path]) for e in entries], refused + problems, limits, entries)
    return units + _container_units(root, containers, len(units), limits)


def _fingerprint(rows: list) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_units(root: str, files: list[tuple[str, int, int]], refused: list[FileEntry], limits: ReadLimits,
                entries: list[FileEntry] | None = None) -> list[WorkUnit]:
    by_path = {e.path: e for e in entries or []}
    all_entries = [by_path.get(rel, FileEntry(rel)) for rel, _, _ in files] + refused
    all_entries.sort(key=lambda e: e.path)
    meta = {rel: (size, mtime) for rel, size, mtime in files}
    units = []
    step = limits.files_per_unit
    for i in range(0, len(all_entries), step):
        chunk = tuple(all_entries[i : i + step])
        fp = _fingerprint([(e.path, meta.get(e.path), e.json_sidecar, e.txt_sidecar, e.jsonl_record, e.reason)
                           for e in chunk])
        units.append(WorkUnit(index=len(units), kind="files", root=root, files=chunk, fingerprint=fp))
    return units


def _container_units(root: str, containers: list[tuple[str, str, int, str]], start: int,
                     limits: ReadLimits) -> list[WorkUnit]:
    units = []
    for rel, kind, size, mtime in sorted(containers):
        if kind == "tar":
            units.append(WorkUnit(start + len(units), "tar", root, container=rel,
                                  fingerprint=_fingerprint([rel, size, mtime])))
            continue
        fs, path = _fs(_join(root, rel))
        try:
            with fs.open(path, "rb") as f:
                meta = pq.ParquetFile(f).metadata
            groups, rows = [], 0
            for g in range(meta.num_row_groups):
                groups.append(g)
                rows += meta.row_group(g).num_rows
                if rows >= limits.rows_per_unit:
                    units.append(WorkUnit(start + len(units), "parquet", root, container=rel, row_groups=tuple(groups),
                                          fingerprint=_fingerprint([rel, size, mtime, groups])))
                    groups, rows = [], 0
            if groups or meta.num_row_groups == 0:
                units.append(WorkUnit(start + len(units), "parquet", root, container=rel, row_groups=tuple(groups),
                                      fingerprint=_fingerprint([rel, size, mtime, groups])))
        except Exception as exc:  # a broken manifest is one refused input, not a failed run
            units.append(WorkUnit(start + len(units), "parquet", root, container=rel, row_groups=(-1,),
                                  fingerprint=_fingerprint([rel, size, mtime, "unreadable", str(exc)])))
    return units


# ---------------------------------------------------------------------------------------------------------- reading


def parse_json_sidecar(raw: bytes, limits: ReadLimits) -> tuple[dict[str, Any], list[str]]:
    """Parse a JSON sidecar, never failing: problems become notes and what can be kept is kept.

    Args:
        raw: the sidecar's bytes.
        limits: holds the size limit.

    Returns:
        The fields (a non-object JSON value is kept under `value`) and notes such as `sidecar_not_utf8`.
    """
    if len(raw) > limits.max_sidecar_bytes:
        return {}, ["sidecar_too_large_ignored"]
    text, notes = _decode_text(raw)
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return {"sidecar_raw": text[:4096]}, notes + ["sidecar_invalid_json"]
    truncated: list[str] = []
    fields = jsonable(value if isinstance(value, dict) else {"value": value}, truncated)
    return fields, notes


def parse_text_sidecar(raw: bytes, limits: ReadLimits) -> tuple[str | None, list[str]]:
    """Decode a `.txt` sidecar (a caption); oversized ones are ignored and non-UTF-8 bytes replaced, with notes."""
    if len(raw) > limits.max_sidecar_bytes:
        return None, ["sidecar_too_large_ignored"]
    text, notes = _decode_text(raw)
    return text.strip(), notes


def _decode_text(raw: bytes) -> tuple[str, list[str]]:
    """UTF-8, else the Windows/Latin-1 code pages that legacy sidecars use (never lossy, always noted)."""
    try:
        return raw.decode("utf-8-sig"), []
    except UnicodeDecodeError:
        pass
    try:
        return raw.decode("cp1252"), ["sidecar_not_utf8_read_as_cp1252"]
    except UnicodeDecodeError:
        return raw.decode("latin-1"), ["sidecar_not_utf8_read_as_latin1"]


def licence_of(sidecar: dict[str, Any]) -> str | None:
    """The licence named by sidecar fields, if any."""
    for key in _LICENCE_KEYS:
        value = sidecar.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def read_unit(unit: WorkUnit, limits: ReadLimits = ReadLimits()) -> Iterator[RawItem]:
    """Yield every input of a work unit, in a stable order.

    Args:
        unit: from `plan_units`.
        limits: reading limits.

    Yields:
        `RawItem`s; refused inputs carry a `reason` (`unsafe_member_path`, `symlink_outside_root`, `unreadable`,
        `file_too_large`, `truncated_archive`, `missing_file`, ...).
    """
    if unit.kind == "files":
        yield from _read_files(unit, limits)
    elif unit.kind == "tar":
        yield from _read_tar(unit, limits)
    elif unit.kind == "parquet":
        yield from _read_parquet(unit, limits)
    else:
        raise ValueError(f"unknown unit kind {unit.kind!r}")


def _read_bytes(uri: str, limits: ReadLimits) -> bytes:
    fs, path = _fs(uri)
    size = fs.size(path)
    if size is not None and size > limits.max_file_bytes:
        raise _TooLarge(size)
    return fs.cat_file(path)


class _TooLarge(Exception):
    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


def _read_files(unit: WorkUnit, limits: ReadLimits) -> Iterator[RawItem]:
    for entry in unit.files:
        uri = _join(unit.root, entry.path)
        if entry.reason:
            details = json.loads(entry.details) if entry.details else {}
            yield RawItem(uri, entry.path, reason=entry.reason, details=details)
            continue
        sidecar: dict[str, Any] = {}
        notes: list[str] = []
        if entry.jsonl_record:
            sidecar.update(json.loads(entry.jsonl_record))
        for sc, parser in ((entry.json_sidecar, "json"), (entry.txt_sidecar, "txt")):
            if not sc:
                continue
            try:
                raw = _read_bytes(_join(unit.root, sc), ReadLimits(max_file_bytes=limits.max_sidecar_bytes))
            except _TooLarge:
                notes.append("sidecar_too_large_ignored")
                continue
            except OSError as exc:
                notes.append("sidecar_unreadable")
                log.warning("cannot read sidecar %s: %s", sc, exc)
                continue
            if parser == "json":
                fields, sc_notes = parse_json_sidecar(raw, limits)
                sidecar.update(fields)
            else:
                text, sc_notes = parse_text_sidecar(raw, limits)
                if text is not None:
                    sidecar["caption" if "caption" not in sidecar else "txt"] = text
            notes.extend(sc_notes)
        try:
            data = _read_bytes(uri, limits)
        except _TooLarge as exc:
            yield RawItem(uri, entry.path, reason="file_too_large",
                          details={"bytes": exc.size, "max_file_bytes": limits.max_file_bytes})
            continue
        except OSError as exc:
            yield RawItem(uri, entry.path, reason="unreadable", details={"error": f"{type(exc).__name__}: {exc}"})
            continue
        if posixpath.splitext(entry.path.lower())[1] in SIDECAR_EXTENSIONS:
            yield RawItem(uri, entry.path, data=data, reason="orphan_sidecar",
                          details={"message": "a sidecar with no image of the same name"})
            continue
        yield RawItem(uri, entry.path, data=data, sidecar=sidecar, notes=notes)


def unsafe_member_path(name: str) -> str | None:
    """Why a tar member name is unsafe to use as a path (absolute, `..`, drive letter, NUL), or None if it is safe."""
    if not name:
        return "empty name"
    if "\x00" in name:
        return "NUL in name"
    norm = name.replace("\\", "/")
    if norm.startswith("/"):
        return "absolute path"
    if len(norm) > 1 and norm[1] == ":":
        return "drive-letter path"
    if ".." in norm.split("/"):
        return "parent-directory component"
    return None


def _member_key(name: str) -> tuple[str, str]:
    """WebDataset key and extension: `dir/00012.jpg` -> (`dir/00012`, `jpg`)."""
    base = posixpath.basename(name)
    dot = base.find(".")
    if dot <= 0:
        return name, ""
    return posixpath.join(posixpath.dirname(name), base[:dot]), base[dot + 1 :].lower()


def _flush_group(container_uri: str, members: list[tuple[str, str, bytes]], limits: ReadLimits) -> Iterator[RawItem]:
    sidecar: dict[str, Any] = {}
    notes: list[str] = []
    media: list[tuple[str, bytes]] = []
    sidecar_names: list[str] = []
    for name, ext, data in members:
        if ext == "json":
            fields, sc_notes = parse_json_sidecar(data, limits)
            sidecar.update(fields)
            notes.extend(sc_notes)
            sidecar_names.append(name)
        elif ext in ("txt", "caption", "text"):
            text, sc_notes = parse_text_sidecar(data, limits)
            if text is not None:
                sidecar["caption" if "caption" not in sidecar else "txt"] = text
            notes.extend(sc_notes)
            sidecar_names.append(name)
        else:
            media.append((name, data))
    if not media:
        for name in sidecar_names:
            yield RawItem(f"{container_uri}#{name}", name, reason="orphan_sidecar",
                          details={"message": "a sidecar member with no image of the same key"})
        return
    for name, data in media:
        yield RawItem(f"{container_uri}#{name}", name, data=data, sidecar=dict(sidecar), notes=list(notes))


def _read_tar(unit: WorkUnit, limits: ReadLimits) -> Iterator[RawItem]:
    assert unit.container is not None
    uri = _join(unit.root, unit.container)
    fs, path = _fs(uri)
    group_key: str | None = None
    group: list[tuple[str, str, bytes]] = []
    try:
        with fs.open(path, "rb") as f:
            with tarfile.open(fileobj=f, mode="r|*") as tf:
                for member in tf:
                    name = member.name
                    member_uri = f"{uri}#{name}"
                    if member.isdir():
                        continue
                    why = unsafe_member_path(name)
                    if why:
                        yield RawItem(member_uri, name, reason="unsafe_member_path", details={"why": why})
                        continue
                    if not member.isfile():
                        kind = "symlink" if member.issym() else "hardlink" if member.islnk() else "special file"
                        yield RawItem(member_uri, name, reason="unsupported_member_type",
                                      details={"type": kind, "linkname": member.linkname})
                        continue
                    if member.size > limits.max_file_bytes:
                        yield RawItem(member_uri, name, reason="file_too_large",
                                      details={"bytes": member.size, "max_file_bytes": limits.max_file_bytes})
                        continue
                    key, ext = _member_key(name)
                    if key != group_key:
                        yield from _flush_group(uri, group, limits)
                        group_key, group = key, []
                    handle = tf.extractfile(member)
                    data = handle.read() if handle is not None else b""
                    if len(data) != member.size:
                        yield RawItem(member_uri, name, data=data, reason="truncated",
                                      details={"expected_bytes": member.size, "got_bytes": len(data)})
                        continue
                    group.append((name, ext, data))
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        yield from _flush_group(uri, group, limits)
        group = []
        reason = "truncated_archive" if isinstance(exc, EOFError) or "unexpected end" in str(exc).lower() else \
            "corrupt_archive"
        yield RawItem(f"{uri}#<archive>", unit.container, reason=reason,
                      details={"error": f"{type(exc).__name__}: {exc}",
                               "message": "members read before the error are kept; the rest are unreadable"})
        return
    yield from _flush_group(uri, group, limits)


def _pick_column(schema: pa.Schema, names: tuple[str, ...], types: tuple) -> str | None:
    lower = {f.name.lower(): f for f in schema}
    for n in names:
        f = lower.get(n)
        if f is not None and any(t(f.type) for t in types):
            return f.name
    return None


def _read_parquet(unit: WorkUnit, limits: ReadLimits) -> Iterator[RawItem]:
    assert unit.container is not None
    uri = _join(unit.root, unit.container)
    if unit.row_groups == (-1,):
        try:
            pq.read_metadata(_fs(uri)[0].open(_fs(uri)[1], "rb"))
            error = "unknown error"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
        yield RawItem(f"{uri}#<manifest>", unit.container, reason="corrupt_manifest", details={"error": error})
        return
    fs, path = _fs(uri)
    manifest_dir = posixpath.dirname(uri)
    with fs.open(path, "rb") as f:
        pf = pq.ParquetFile(f)
        schema = pf.schema_arrow
        first_row = sum(pf.metadata.row_group(g).num_rows for g in range(min(unit.row_groups, default=0)))
        bytes_col = _pick_column(schema, _BYTES_COLUMNS, (pa.types.is_binary, pa.types.is_large_binary,
                                                         pa.types.is_struct))
        path_col = _pick_column(schema, _PATH_COLUMNS, (pa.types.is_string, pa.types.is_large_string))
        row = first_row
        for g in unit.row_groups:
            try:
                table = pf.read_row_group(g)
            except Exception as exc:  # a corrupt row group loses its rows, recorded; the others are read
                n = pf.metadata.row_group(g).num_rows
                yield RawItem(f"{uri}#rows-{row}-{row + n - 1}", unit.container, reason="corrupt_manifest",
                              details={"error": f"{type(exc).__name__}: {exc}", "row_group": g, "rows": n})
                row += n
                continue
            for record in table.to_pylist():
                yield _manifest_item(uri, manifest_dir, row, record, bytes_col, path_col, limits)
                row += 1


def _manifest_item(uri: str, manifest_dir: str, row: int, record: dict[str, Any], bytes_col: str | None,
                   path_col: str | None, limits: ReadLimits) -> RawItem:
    member_uri = f"{uri}#{row}"
    data = record.get(bytes_col) if bytes_col else None
    rel_path = record.get(path_col) if path_col else None
    if isinstance(data, dict):  # Hugging Face `Image` feature: {"bytes": ..., "path": ...}
        rel_path = rel_path or data.get("path")
        data = data.get("bytes")
    truncated: list[str] = []
    sidecar = {k: jsonable(v, truncated, k) for k, v in record.items()
               if k not in (bytes_col, path_col) and not isinstance(v, bytes | bytearray)}
    name = rel_path or f"row-{row}"
    if data is not None:
        if len(data) > limits.max_file_bytes:
            return RawItem(member_uri, name, reason="file_too_large",
                           details={"bytes": len(data), "max_file_bytes": limits.max_file_bytes})
        return RawItem(member_uri, name, data=bytes(data), sidecar=sidecar)
    if not rel_path:
        return RawItem(member_uri, name, reason="no_image_in_row",
                       details={"message": "the row has neither image bytes nor a path",
                                "bytes_column": bytes_col, "path_column": path_col})
    if "://" in rel_path and not rel_path.startswith("file://"):
        return RawItem(member_uri, name, reason="remote_path_not_fetched",
                       details={"path": rel_path, "message": "the pipeline never downloads; fetch the drop first"})
    target = rel_path if rel_path.startswith("/") or "://" in rel_path else posixpath.join(manifest_dir, rel_path)
    try:
        data = _read_bytes(target, limits)
    except _TooLarge as exc:
        return RawItem(member_uri, name, reason="file_too_large",
                       details={"bytes": exc.size, "max_file_bytes": limits.max_file_bytes})
    except FileNotFoundError:
        return RawItem(member_uri, name, reason="missing_file", details={"path": target})
    except OSError as exc:
        return RawItem(member_uri, name, reason="unreadable", details={"path": target, "error": str(exc)})
    sidecar["manifest_path"] = rel_path
    return RawItem(member_uri, name, data=data, sidecar=sidecar)


__all__ = [
    "FileEntry",
    "RawItem",
    "ReadLimits",
    "WorkUnit",
    "canonical_uri",
    "drop_key",
    "licence_of",
    "parse_json_sidecar",
    "parse_text_sidecar",
    "plan_units",
    "read_unit",
    "unsafe_member_path",
]


def canonical_uri(source: str) -> str:
    """A stable identity for a source drop: the absolute path for local drops, the URI otherwise."""
    if _is_local(source):
        return os.path.abspath(_local_path(source)).rstrip("/") or "/"
    return source.rstrip("/")


def drop_key(source: str) -> str:
    """The partition key of a source drop: its readable name plus a short hash of its canonical URI.

    Two drops with the same folder name in different places get different keys; the same drop always the same one.
    """
    uri = canonical_uri(source)
    name = posixpath.basename(uri) or "root"
    for suffix in (".tar.gz", ".tgz", ".tar", ".parquet", ".pq"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)[:48] or "drop"
    return f"{safe}-{hashlib.sha256(uri.encode()).hexdigest()[:8]}"
