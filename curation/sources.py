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
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow.parquet as pq

from curation.image_io import IMAGE_EXTENSIONS, sniff_format
from curation.manifests import read_manifest
from curation.sidecars import licence_of, load_jsonl, parse_json_sidecar, parse_text_sidecar
from curation.source_access import (
    DEFAULT_LIMITS,
    RawItem,
    ReadLimits,
    ReadRefused,
    display_uri,
    file_kind,
    read_head,
    read_source_file,
    utf8_safe,
)
from curation.webdataset import read_tar, unsafe_member_path

log = logging.getLogger(__name__)

SIDECAR_EXTENSIONS = (".json", ".txt")
METADATA_JSONL = "metadata.jsonl"
_CONTAINER_EXTENSIONS = (".tar", ".tar.gz", ".tgz", ".parquet", ".pq")


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


def _container_kind(uri: str) -> str | None:
    """`tar` / `parquet` when the file's bytes (or, for gzip, its name) say it is one."""
    lower = uri.lower()
    try:
        head = read_head(uri)
    except (OSError, ReadRefused):
        return None
    fmt = sniff_format(head)
    if fmt == "TAR":
        return "tar"
    if fmt == "PARQUET":
        return "parquet"
    if head[:2] == b"\x1f\x8b" and lower.endswith((".tar.gz", ".tgz")):
        return "tar"
    return None


def _refused(rel: str, reason: str, **details: Any) -> FileEntry:
    return FileEntry(rel, reason=reason, details=json.dumps(details))


def _list_local(root: str) -> tuple[list[tuple[str, int, int]], list[FileEntry]]:
    """Walk a local tree without following directory symlinks; refuse symlinks that leave the root and anything
    that is not a regular file (a FIFO would hang a reader, a device never ends)."""
    real_root = os.path.realpath(root)
    files: list[tuple[str, int, int]] = []
    refused: list[FileEntry] = []

    def leaves(full: str) -> str | None:
        target = os.path.realpath(full)
        return target if os.path.commonpath([real_root, target]) != real_root else None

    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                rel = os.path.relpath(full, root)
                if (target := leaves(full)) is not None:
                    refused.append(_refused(rel, "symlink_outside_root", target=target))
                else:
                    log.info("not following directory symlink %s (its target is inside the root)", rel)
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root).replace(os.sep, "/")
            if os.path.islink(full):
                if (target := leaves(full)) is not None:
                    refused.append(_refused(rel, "symlink_outside_root", target=target))
                    continue
                if not os.path.exists(full):
                    refused.append(_refused(rel, "unreadable", error="dangling symlink"))
                    continue
            try:
                st = os.stat(full)
            except OSError as exc:
                refused.append(_refused(rel, "unreadable", error=str(exc)))
                continue
            if not stat.S_ISREG(st.st_mode):
                refused.append(_refused(rel, "not_a_regular_file", type=file_kind(st.st_mode)))
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


@dataclass
class _Jsonl:
    """Every `metadata.jsonl` of a drop: the first record per file wins, later ones are ledger rows."""

    records: dict[str, str]
    owner: dict[str, str]
    problems: dict[str, list[str]]
    entries: list[FileEntry]

    @classmethod
    def load(cls, root: str, paths: list[str], limits: ReadLimits) -> _Jsonl:
        out = cls({}, {}, {}, [])
        for rel in paths:
            problems = out.problems.setdefault(rel, [])
            try:
                records, issues = load_jsonl(_join(root, rel), rel, limits)
            except (OSError, ReadRefused) as exc:  # the planner must survive any one file
                out.entries.append(_refused(rel, getattr(exc, "reason", "unreadable"), error=str(exc)))
                continue
            problems.extend(issues)
            for rec in records:
                if rec.key in out.records:
                    out.entries.append(_refused(f"{rel}#line-{rec.line}", "duplicate_metadata", file=rec.key,
                                                kept=out.owner[rec.key],
                                                message="a later metadata.jsonl record for the same file"))
                    continue
                out.records[rec.key] = rec.text
                out.owner[rec.key] = f"{rel}#line-{rec.line}"
        return out


def plan_units(source: str, limits: ReadLimits = DEFAULT_LIMITS, previous: Iterable[str] = ()) -> list[WorkUnit]:
    """Cut a source drop into deterministic work units (same drop, same units, same order).

    Args:
        source: a directory, a `.tar` shard or a Parquet manifest; a local path or an fsspec URI.
        limits: reading limits (unit sizes among them).
        previous: the `source_uri`s an earlier run of this drop recorded (kept rows and ledger rows); a top-level
            input among them that the drop no longer holds becomes a `source_removed` ledger row.

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
        return _single_file_units(source, fs, path, limits)

    root = source.rstrip("/")
    if _is_local(root):
        listing, refused = _list_local(_local_path(root))
    else:
        listing, refused = _list_remote(root), []
    names = {rel for rel, _, _ in listing}
    stems_with_media: dict[str, str] = {}
    containers: list[tuple[str, str, int, str]] = []
    loose: list[tuple[str, int, int]] = []
    jsonl_paths: list[str] = []
    for rel, size, mtime in listing:
        lower = rel.lower()
        if posixpath.basename(lower) == METADATA_JSONL:
            jsonl_paths.append(rel)
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
    jsonl = _Jsonl.load(root, jsonl_paths, limits)
    # Sidecars belong to the non-sidecar file with the same stem; the rest are inputs of their own.
    entries: list[FileEntry] = []
    for rel, _, _ in loose:
        ext = posixpath.splitext(rel.lower())[1]
        if ext in SIDECAR_EXTENSIONS and _stem(rel) in stems_with_media:
            continue
        stem = _stem(rel)
        json_sc = next((c for c in (stem + ".json", stem + ".JSON") if c in names and c != rel), None)
        txt_sc = next((c for c in (stem + ".txt", stem + ".TXT") if c in names and c != rel), None)
        entries.append(FileEntry(rel, json_sc, txt_sc, jsonl.records.get(posixpath.normpath(rel))))
    matched = {posixpath.normpath(e.path) for e in entries}
    for key in sorted(set(jsonl.records) - matched):
        owner = jsonl.owner[key].rsplit("#", 1)[0]
        jsonl.problems[owner].append(f"record for {key}: no such file in the drop")
    # A metadata.jsonl with unusable lines is an input partly dropped: it gets its own ledger row.
    problems = [_refused(rel, "invalid_sidecar_lines", problems=issues)
                for rel, issues in sorted(jsonl.problems.items()) if issues]
    for rel, issues in jsonl.problems.items():
        for issue in issues:
            log.warning("%s: %s", rel, issue)
    present = set(names) | {e.path for e in refused}
    removed = _removed(root, present, previous)
    sizes = {rel: (size, mtime) for rel, size, mtime in listing}
    units = _file_units(root, [(e.path, *sizes[e.path]) for e in entries],
                        refused + problems + jsonl.entries + removed, limits, entries, sizes)
    return units + _container_units(root, containers, len(units), limits)


def _single_file_units(source: str, fs: fsspec.AbstractFileSystem, path: str, limits: ReadLimits) -> list[WorkUnit]:
    """A drop that is one file: a shard, a manifest, or one loose file (a drop of one)."""
    parent = posixpath.dirname(source.rstrip("/")) or "."
    rel = posixpath.basename(source.rstrip("/"))
    if _is_local(source):
        st = os.stat(_local_path(source))
        if not stat.S_ISREG(st.st_mode):
            return _file_units(parent, [], [_refused(rel, "not_a_regular_file", type=file_kind(st.st_mode))], limits)
    kind = _container_kind(source)
    if kind is None:
        return _file_units(parent, [(rel, 0, 0)], [], limits)
    info = fs.info(path)
    return _container_units(parent, [(rel, kind, int(info.get("size") or 0), str(info.get("mtime", "")))], 0, limits)


def _removed(root: str, present: set[str], previous: Iterable[str]) -> list[FileEntry]:
    """Top-level inputs an earlier run saw that the drop no longer holds (a member's shard, a row's manifest)."""
    prefix = display_uri(root.rstrip("/"))[0] + "/"
    shown = {display_uri(rel)[0] for rel in present}
    gone: set[str] = set()
    for uri in previous:
        if not uri.startswith(prefix):
            continue
        rel = uri[len(prefix) :]
        cuts = [rel] + [rel[:i] for i, ch in enumerate(rel) if ch == "#"]
        if any(c in shown for c in cuts):
            continue
        first = rel.split("#", 1)[0]
        container = first.lower().endswith(_CONTAINER_EXTENSIONS) or posixpath.basename(first) == METADATA_JSONL
        gone.add(first if container else rel)
    return [_refused(rel, "source_removed", message="an input of an earlier run that the drop no longer holds")
            for rel in sorted(gone)]


def _fingerprint(rows: list) -> str:
    return hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _file_units(root: str, files: list[tuple[str, int, int]], refused: list[FileEntry], limits: ReadLimits,
                entries: list[FileEntry] | None = None,
                sizes: dict[str, tuple[int, int]] | None = None) -> list[WorkUnit]:
    by_path = {e.path: e for e in entries or []}
    all_entries = [by_path.get(rel, FileEntry(rel)) for rel, _, _ in files] + refused
    all_entries.sort(key=lambda e: e.path)
    meta = {rel: (size, mtime) for rel, size, mtime in files}
    sizes = sizes or {}
    units = []
    step = limits.files_per_unit
    for i in range(0, len(all_entries), step):
        chunk = tuple(all_entries[i : i + step])
        # sidecars are part of what a unit covers: an edited caption must recompute its image's part
        fp = _fingerprint([(e.path, meta.get(e.path), e.json_sidecar, sizes.get(e.json_sidecar or ""),
                            e.txt_sidecar, sizes.get(e.txt_sidecar or ""), e.jsonl_record, e.reason, e.details)
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


def read_unit(unit: WorkUnit, limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[RawItem]:
    """Yield every input of a work unit, in a stable order, each with a storable (UTF-8) `source_uri`.

    Args:
        unit: from `plan_units`.
        limits: reading limits.

    Yields:
        `RawItem`s; refused inputs carry a `reason` (`unsafe_member_path`, `symlink_outside_root`, `outside_source`,
        `not_a_regular_file`, `unreadable`, `file_too_large`, `key_too_large`, `truncated_archive`,
        `missing_file`, `source_removed`, ...).
    """
    if unit.kind == "files":
        items = _read_files(unit, limits)
    elif unit.kind == "tar":
        assert unit.container is not None
        items = read_tar(_join(unit.root, unit.container), unit.container, limits)
    elif unit.kind == "parquet":
        assert unit.container is not None
        items = read_manifest(_join(unit.root, unit.container), unit.container, unit.row_groups,
                              (unit.root, *limits.allowed_roots), limits)
    else:
        raise ValueError(f"unknown unit kind {unit.kind!r}")
    for item in items:
        yield utf8_safe(item)


def _read_sidecars(unit: WorkUnit, entry: FileEntry, limits: ReadLimits) -> tuple[dict[str, Any], list[str]]:
    sidecar: dict[str, Any] = {}
    notes: list[str] = []
    if entry.jsonl_record:
        sidecar.update(json.loads(entry.jsonl_record))
    for sc, parser in ((entry.json_sidecar, "json"), (entry.txt_sidecar, "txt")):
        if not sc:
            continue
        try:
            raw = read_source_file(_join(unit.root, sc), limits.max_sidecar_bytes, (unit.root,))
        except ReadRefused as exc:
            notes.append({"file_too_large": "sidecar_too_large_ignored"}.get(exc.reason, f"sidecar_{exc.reason}"))
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
    return sidecar, notes


def _read_files(unit: WorkUnit, limits: ReadLimits) -> Iterator[RawItem]:
    for entry in unit.files:
        uri = _join(unit.root, entry.path)
        if entry.reason:
            details = json.loads(entry.details) if entry.details else {}
            yield RawItem(uri, entry.path, reason=entry.reason, details=details)
            continue
        try:
            yield _read_file(unit, entry, uri, limits)
        except Exception as exc:  # one file that breaks a reader must not take the rest of the unit down
            log.warning("reading %s failed: %s", entry.path, exc, exc_info=True)
            yield RawItem(uri, entry.path, reason="read_error", details={"error": f"{type(exc).__name__}: {exc}"})


def _read_file(unit: WorkUnit, entry: FileEntry, uri: str, limits: ReadLimits) -> RawItem:
    sidecar, notes = _read_sidecars(unit, entry, limits)
    try:
        # contained again at read time: the planner's view of the tree may have changed since
        data = read_source_file(uri, limits.max_file_bytes, (unit.root,))
    except ReadRefused as exc:
        return RawItem(uri, entry.path, reason=exc.reason, details=exc.details or {"error": str(exc)})
    except OSError as exc:
        return RawItem(uri, entry.path, reason="unreadable", details={"error": f"{type(exc).__name__}: {exc}"})
    if posixpath.splitext(entry.path.lower())[1] in SIDECAR_EXTENSIONS:
        return RawItem(uri, entry.path, data=data, reason="orphan_sidecar",
                       details={"message": "a sidecar with no image of the same name"})
    return RawItem(uri, entry.path, data=data, sidecar=sidecar, notes=notes)


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
