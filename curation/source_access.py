"""How a source drop is touched: what an input is, the reading limits, and the only way a source file is read.

Everything a crawl drop names (a manifest's paths, a sidecar, a symlink) is untrusted. A file is read only when
- it resolves, symlinks followed, inside the drop's root or a root the operator listed (`ReadLimits.allowed_roots`),
  else `OutsideSource`: nothing of it is read, and the refusal names the path as given, never its content;
- it is a regular file: checked by `stat` before opening (a device is never opened) and by `fstat` on the opened
  descriptor (opened non-blocking, so a FIFO cannot hang the reader), else `NotRegular`;
- it fits the size cap, enforced while reading (at most cap + 1 bytes are read, whatever the size claims), else
  `TooLarge`.

Names a drop holds need not be UTF-8 (POSIX names are bytes); `display_uri` gives the UTF-8 form that Arrow can
store, and the raw bytes that make it lossless.
"""

from __future__ import annotations

import functools
import os
import posixpath
import stat
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import fsspec

from curation.metadata import utf8_text

_CHUNK = 1 << 20
_REMOTE_FETCH_SCHEMES = ("http", "https", "ftp", "ftps", "sftp", "ssh")


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
    allowed_roots: tuple[str, ...] = ()
    """Directories (or URI prefixes) outside the drop that manifest paths may point into, e.g. a mounted image
    store; anything else outside the drop is `outside_source`."""
    max_key_bytes: int = 512 << 20
    """Most bytes held for one WebDataset key (its image and sidecar members) until the key ends; members past it
    are `key_too_large`, unread."""
    max_json_depth: int = 64
    """Deepest nesting accepted in a sidecar or a `metadata.jsonl` record; deeper is ignored with a note."""


DEFAULT_LIMITS = ReadLimits()


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
    uri_bytes: bytes | None = None
    """The raw bytes of `source_uri` when they are not UTF-8 (then `source_uri` is their display form)."""


class ReadRefused(Exception):
    """A source file that must not be read; `reason` names why for the ledger."""

    reason = "unreadable"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details = details


class OutsideSource(ReadRefused):
    reason = "outside_source"


class NotRegular(ReadRefused):
    reason = "not_a_regular_file"


class TooLarge(ReadRefused):
    reason = "file_too_large"

    def __init__(self, size: int, cap: int) -> None:
        super().__init__(f"{size} bytes > {cap}", bytes=size, max_file_bytes=cap)
        self.size = size


def is_local(uri: str) -> bool:
    """True for a plain path or a `file://` URI."""
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> str:
    """The path of a local URI (`file://` stripped)."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def fs_of(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    return fsspec.core.url_to_fs(uri)


def file_kind(mode: int) -> str:
    """A human name of a non-regular file type."""
    for test, name in ((stat.S_ISFIFO, "fifo"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink")):
        if test(mode):
            return name
    return "regular file" if stat.S_ISREG(mode) else "unknown"


def _inside(path: str, root: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _uri_inside(uri: str, root: str) -> bool:
    scheme, _, rest = uri.partition("://")
    root_scheme, _, root_rest = root.partition("://")
    if scheme != root_scheme:
        return False
    norm, root_norm = posixpath.normpath("/" + rest), posixpath.normpath("/" + root_rest)
    return norm == root_norm or norm.startswith(root_norm.rstrip("/") + "/")


def resolve_reference(reference: str, base_dir: str) -> str | None:
    """Where a path written in a manifest points: a local path or a URI (None for a `file://host/...` URI).

    Relative paths are relative to `base_dir` (the manifest's directory); `file://` URIs are percent-decoded.
    """
    if reference.startswith("file:"):
        parsed = urllib.parse.urlparse(reference)
        if parsed.netloc not in ("", "localhost"):
            return None
        return urllib.parse.unquote(parsed.path)
    if "://" in reference or reference.startswith("/"):
        return reference
    if is_local(base_dir):
        return os.path.join(local_path(base_dir), reference)
    return posixpath.join(base_dir, reference)


@functools.lru_cache(maxsize=256)
def _real_root(root: str) -> str:
    # roots are the drop and the operator's stores: resolved once per process, not once per file
    return os.path.realpath(local_path(root))


def contained(target: str, roots: tuple[str, ...]) -> str | None:
    """The real location of `target` if it lies inside one of `roots` (symlinks followed), else None."""
    if is_local(target):
        real = os.path.realpath(local_path(target))
        for root in roots:
            if is_local(root) and _inside(real, _real_root(root)):
                return real
        return None
    for root in roots:
        if not is_local(root) and _uri_inside(target, root):
            return target
    return None


def is_remote_fetch(reference: str) -> bool:
    """A URL that only a download could read (the pipeline never downloads)."""
    return reference.partition("://")[0].lower() in _REMOTE_FETCH_SCHEMES and "://" in reference


def read_source_file(uri: str, cap: int, roots: tuple[str, ...] | None = None) -> bytes:
    """The bytes of one source file, read under the rules of this module.

    Args:
        uri: a local path or an fsspec URI.
        cap: most bytes accepted.
        roots: where the file must resolve (None: the caller checked containment already).

    Raises:
        OutsideSource, NotRegular, TooLarge; FileNotFoundError; OSError for other I/O failures.
    """
    target = uri
    if roots is not None:
        real = contained(uri, roots)
        if real is None:
            raise OutsideSource("resolves outside the source roots")
        target = real
    if is_local(target):
        # the resolved path is opened without following a final symlink: one swapped in since is refused
        return _read_local(local_path(target), cap, nofollow=roots is not None)
    fs, path = fs_of(target)
    size = fs.size(path)
    if size is not None and size > cap:
        raise TooLarge(int(size), cap)
    with fs.open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise TooLarge(len(data), cap)
    return data


def read_head(uri: str, n: int = 512) -> bytes:
    """The first `n` bytes of a regular file (the planner sniffs containers by them).

    Raises:
        NotRegular; OSError.
    """
    if is_local(uri):
        return _read_local(local_path(uri), n, head_only=True)
    fs, path = fs_of(uri)
    with fs.open(path, "rb") as f:
        return f.read(n)


def _read_local(path: str, cap: int, head_only: bool = False, nofollow: bool = False) -> bytes:
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # never open a device: opening one can have effects of its own
        raise NotRegular(f"a {file_kind(st.st_mode)}", type=file_kind(st.st_mode))
    if st.st_size > cap and not head_only:
        raise TooLarge(st.st_size, cap)
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    if nofollow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags)
    try:
        now = os.fstat(fd)  # it may have been swapped for something else since the stat
        if not stat.S_ISREG(now.st_mode):
            raise NotRegular(f"a {file_kind(now.st_mode)}", type=file_kind(now.st_mode))
        chunks: list[bytes] = []
        got = 0
        want = cap if head_only else cap + 1
        while got < want:
            chunk = os.read(fd, min(_CHUNK, want - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
        if got > cap:  # it grew while being read
            raise TooLarge(got, cap)
        return b"".join(chunks)
    finally:
        os.close(fd)


def stat_regular(path: str) -> os.stat_result:
    """`os.stat` of a local file that must be regular (planning uses it before sniffing a file's head)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(f"a {file_kind(st.st_mode)}", type=file_kind(st.st_mode))
    return st


def display_uri(uri: str) -> tuple[str, bytes | None]:
    """A UTF-8 form of a name and, when the name is not UTF-8, its raw bytes.

    Names listed from a POSIX directory arrive surrogate-escaped (PEP 383); Arrow refuses such strings. The display
    form writes each undecodable byte as `\\xNN`; the raw bytes make it lossless (a name may hold a literal `\\x`).
    """
    shown = utf8_text(uri)
    if shown is uri:
        return uri, None
    try:
        return shown, uri.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return shown, uri.encode("utf-8", "surrogatepass")


def utf8_safe(item: RawItem) -> RawItem:
    """`item` with a storable `source_uri` (and name), the raw bytes kept when the name was not UTF-8."""
    shown, raw = display_uri(item.source_uri)
    if raw is None:
        return item
    item.source_uri, item.uri_bytes = shown, raw
    item.name = display_uri(item.name)[0]
    item.details = {k: display_uri(v)[0] if isinstance(v, str) else v for k, v in item.details.items()}
    item.details["source_uri_bytes_hex"] = raw.hex()
    item.notes.append("name_not_utf8")
    return item
