"""Sidecars: `<name>.json` / `<name>.txt` files, WebDataset `.json`/`.txt` members and `metadata.jsonl` lines.

Parsers never fail: whatever cannot be used becomes a note (a sidecar) or a problem line (a `metadata.jsonl`), and
what is kept is always storable: valid JSON (no NaN / Infinity), bounded nesting, UTF-8 strings.
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from curation.metadata import jsonable
from curation.source_access import NotRegular, ReadLimits, file_kind, fs_of, is_local, local_path

_LICENCE_KEYS = ("licence", "license", "item_licence", "item_license", "LICENSE", "License")
_NAME_KEYS = ("file_name", "file", "path", "filename")


def _deeper_than(value: Any, limit: int) -> bool:
    """True when containers nest more than `limit` levels (iterative: a deep value must not blow the stack here)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))
    return False


def loads_bounded(text: str, max_depth: int) -> tuple[Any, str | None, bool]:
    """Parse JSON text that may be hostile.

    Returns:
        (value, problem, had_non_finite): `problem` names why nothing was parsed (`invalid JSON (...)`, `nested
        deeper than N levels`); NaN / Infinity literals are read as null and flagged.
    """
    non_finite = []

    def constant(name: str) -> None:
        non_finite.append(name)
        return None

    try:
        value = json.loads(text, parse_constant=constant)
    except RecursionError:
        return None, f"nested deeper than {max_depth} levels", False
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON ({exc.msg})", False
    except ValueError as exc:  # e.g. an integer longer than Python's digit limit
        return None, f"invalid JSON ({exc})", False
    if _deeper_than(value, max_depth):
        return None, f"nested deeper than {max_depth} levels", False
    return value, None, bool(non_finite)


def parse_json_sidecar(raw: bytes, limits: ReadLimits) -> tuple[dict[str, Any], list[str]]:
    """Parse a JSON sidecar, never failing: problems become notes and what can be kept is kept.

    Args:
        raw: the sidecar's bytes.
        limits: holds the size and depth limits.

    Returns:
        The fields (a non-object JSON value is kept under `value`) and notes such as `sidecar_not_utf8`.
    """
    if len(raw) > limits.max_sidecar_bytes:
        return {}, ["sidecar_too_large_ignored"]
    text, notes = decode_text(raw)
    value, problem, non_finite = loads_bounded(text, limits.max_json_depth)
    if problem is not None and problem.startswith("nested"):
        return {}, notes + ["sidecar_too_deep_ignored"]
    if problem is not None:
        return {"sidecar_raw": jsonable(text[:4096], [])}, notes + ["sidecar_invalid_json"]
    if non_finite:
        notes.append("sidecar_non_finite_number_as_null")
    fields = jsonable(value if isinstance(value, dict) else {"value": value}, [])
    return fields, notes


def parse_text_sidecar(raw: bytes, limits: ReadLimits) -> tuple[str | None, list[str]]:
    """Decode a `.txt` sidecar (a caption); oversized ones are ignored and non-UTF-8 bytes replaced, with notes."""
    if len(raw) > limits.max_sidecar_bytes:
        return None, ["sidecar_too_large_ignored"]
    text, notes = decode_text(raw)
    return text.strip(), notes


def decode_text(raw: bytes) -> tuple[str, list[str]]:
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


# ------------------------------------------------------------------------------------------------ metadata.jsonl
@dataclass(frozen=True)
class JsonlRecord:
    """One usable `metadata.jsonl` line: the file it describes (relative to the drop root) and its JSON text."""

    key: str
    line: int
    text: str


def _bounded_lines(f: IO[bytes], cap: int) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes) per line, None for a line longer than `cap` (skipped without holding it)."""
    lineno = 0
    while True:
        raw = f.readline(cap + 1)
        if not raw:
            return
        lineno += 1
        if len(raw) > cap and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):  # skip the rest of the long line in bounded pieces
                raw = f.readline(cap + 1)
            yield lineno, None
            continue
        yield lineno, raw


def _open_listing_file(uri: str) -> IO[bytes]:
    if is_local(uri):
        path = local_path(uri)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            raise NotRegular(f"a {file_kind(mode)}")
        return os.fdopen(fd, "rb")
    fs, path = fs_of(uri)
    # fsspec's files have readline() without a size; the bounded line reader needs one (s3fs drops hit this)
    return io.BufferedReader(fs.open(path, "rb"))


def load_jsonl(uri: str, rel: str, limits: ReadLimits) -> tuple[list[JsonlRecord], list[str]]:
    """The records of a `metadata.jsonl` (Hugging Face ImageFolder) and a problem line for each unusable line.

    Args:
        uri: where the file is (a regular file inside the drop; the planner checked).
        rel: its path relative to the drop root (file names in it are relative to its directory).
        limits: line length and nesting limits.
    """
    base = posixpath.dirname(rel)
    records: list[JsonlRecord] = []
    problems: list[str] = []
    with _open_listing_file(uri) as f:
        for lineno, raw in _bounded_lines(f, limits.max_sidecar_bytes):
            if raw is None:
                problems.append(f"line {lineno}: longer than {limits.max_sidecar_bytes} bytes, ignored")
                continue
            if not raw.strip():
                continue
            record, problem, _ = loads_bounded(raw.decode("utf-8", errors="replace"), limits.max_json_depth)
            if problem is not None:
                problems.append(f"line {lineno}: {problem}")
                continue
            if not isinstance(record, dict):
                problems.append(f"line {lineno}: not a JSON object")
                continue
            name = next((record[k] for k in _NAME_KEYS if isinstance(record.get(k), str)), None)
            if name is None:
                problems.append(f"line {lineno}: no file_name/file/path field")
                continue
            text = json.dumps(jsonable(record, []), ensure_ascii=False, allow_nan=False)
            records.append(JsonlRecord(posixpath.normpath(posixpath.join(base, name)), lineno, text))
    return records, problems
