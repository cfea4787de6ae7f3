"""WebDataset `.tar` shards (img2dataset layout): members grouped by key, sidecar members applied to the key's images.

The tar is streamed (`r|*`): a member is never extracted to disk, hostile names and links are refused, and what a
key holds in memory until it ends is bounded (`ReadLimits.max_key_bytes`), so a shard with many large members of
one key cannot grow a worker without limit.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

from curation.sidecars import parse_json_sidecar, parse_text_sidecar
from curation.source_access import RawItem, ReadLimits, fs_of

_JSON_EXTS = ("json",)
_TEXT_EXTS = ("txt", "caption", "text")


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


def member_key(name: str) -> tuple[str, str]:
    """WebDataset key and extension: `dir/00012.jpg` -> (`dir/00012`, `jpg`)."""
    base = posixpath.basename(name)
    dot = base.find(".")
    if dot <= 0:
        return name, ""
    return posixpath.join(posixpath.dirname(name), base[:dot]), base[dot + 1 :].lower()


def _flush_group(container_uri: str, members: list[tuple[str, str, bytes | None]],
                 limits: ReadLimits) -> Iterator[RawItem]:
    sidecar: dict[str, Any] = {}
    notes: list[str] = []
    media: list[tuple[str, bytes]] = []
    sidecar_names: list[str] = []
    for name, ext, data in members:
        if data is None:
            notes.append("sidecar_too_large_ignored")
            sidecar_names.append(name)
        elif ext in _JSON_EXTS:
            fields, sc_notes = parse_json_sidecar(data, limits)
            sidecar.update(fields)
            notes.extend(sc_notes)
            sidecar_names.append(name)
        elif ext in _TEXT_EXTS:
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


def _refusal(member: tarfile.TarInfo, limits: ReadLimits) -> tuple[str, dict[str, Any]] | None:
    why = unsafe_member_path(member.name)
    if why:
        return "unsafe_member_path", {"why": why}
    if not member.isfile():
        kind = "symlink" if member.issym() else "hardlink" if member.islnk() else "special file"
        return "unsupported_member_type", {"type": kind, "linkname": member.linkname}
    if member.size > limits.max_file_bytes:
        return "file_too_large", {"bytes": member.size, "max_file_bytes": limits.max_file_bytes}
    return None


def read_tar(uri: str, container: str, limits: ReadLimits) -> Iterator[RawItem]:
    """Every member of one shard as a `RawItem` (sidecar members folded into their key's images).

    Args:
        uri: the shard (a regular file inside the drop; the planner checked).
        container: its path relative to the drop root (names the archive-level refusal).
        limits: member, key and sidecar limits.
    """
    fs, path = fs_of(uri)
    group_key: str | None = None
    group: list[tuple[str, str, bytes | None]] = []
    held = 0
    try:
        with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r|*") as tf:
            for member in tf:
                name = member.name
                member_uri = f"{uri}#{name}"
                if member.isdir():
                    continue
                refused = _refusal(member, limits)
                if refused:
                    yield RawItem(member_uri, name, reason=refused[0], details=refused[1])
                    continue
                key, ext = member_key(name)
                if key != group_key:
                    yield from _flush_group(uri, group, limits)
                    group_key, group, held = key, [], 0
                is_sidecar = ext in _JSON_EXTS + _TEXT_EXTS
                if is_sidecar and member.size > limits.max_sidecar_bytes:
                    group.append((name, ext, None))  # never read: its key's images carry the note
                    continue
                if held + member.size > limits.max_key_bytes:
                    yield RawItem(member_uri, name, reason="key_too_large",
                                  details={"key": key, "bytes_held": held, "member_bytes": member.size,
                                           "max_key_bytes": limits.max_key_bytes})
                    continue
                handle = tf.extractfile(member)
                data = handle.read(member.size) if handle is not None else b""
                if len(data) != member.size:
                    yield RawItem(member_uri, name, data=data, reason="truncated",
                                  details={"expected_bytes": member.size, "got_bytes": len(data)})
                    continue
                group.append((name, ext, data))
                held += len(data)
    except (tarfile.TarError, EOFError, OSError, ValueError) as exc:
        yield from _flush_group(uri, group, limits)
        reason = "truncated_archive" if isinstance(exc, EOFError) or "unexpected end" in str(exc).lower() else \
            "corrupt_archive"
        yield RawItem(f"{uri}#<archive>", container, reason=reason,
                      details={"error": f"{type(exc).__name__}: {exc}",
                               "message": "members read before the error are kept; the rest are unreadable"})
        return
    yield from _flush_group(uri, group, limits)
