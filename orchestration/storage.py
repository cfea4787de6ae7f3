"""The storage layout of the data contract, over any filesystem pyarrow or fsspec opens.

`<root>/<asset>/<partition or _>/part-NNNNN.parquet`, each written under a temporary name and renamed, with the
part's summary in the Parquet footer (so a finished part is its own completion marker), plus `_SUCCESS.json` once the
whole partition is done. The `decisions` ledger lives at `<root>/decisions/<asset>/<partition>/part-NNNNN.parquet`,
part for part beside the data it explains. Registered source drops live at `<root>/_sources/<partition>.json`.

No Dagster and no Ray here: Ray workers write parts through this class, and the CLI reads through it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import posixpath
import socket
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from curation.decisions import DECISIONS_SCHEMA

UNPARTITIONED = "_"
SUMMARY_KEY = b"atelier.summary"
SUCCESS_MARKER = "_SUCCESS.json"


def _filesystem(root: str) -> tuple[pafs.FileSystem, str]:
    if "://" not in root:
        return pafs.LocalFileSystem(), os.path.abspath(root)
    try:
        return pafs.FileSystem.from_uri(root)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(root)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


class TableStore:
    """Parquet parts, completion markers and JSON documents under one storage root."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.fs, self.base = _filesystem(root)

    def __reduce__(self):  # pickles as its root: Ray workers rebuild the filesystem themselves
        return (TableStore, (self.root,))

    # ----------------------------------------------------------------------------------------------------- paths
    def asset_dir(self, asset: str) -> str:
        """Directory holding every partition of an asset."""
        return posixpath.join(self.base, asset)

    def dir(self, asset: str, partition: str | None = None) -> str:
        """Directory of one asset partition (`_` when unpartitioned)."""
        return posixpath.join(self.base, asset, partition or UNPARTITIONED)

    def part_path(self, asset: str, partition: str | None, index: int) -> str:
        """Path of part `index` of an asset partition."""
        return posixpath.join(self.dir(asset, partition), f"part-{index:05d}.parquet")

    def decisions_dir(self, asset: str, partition: str | None = None) -> str:
        """Ledger directory of the decisions an asset partition made."""
        return posixpath.join(self.base, "decisions", asset, partition or UNPARTITIONED)

    def uri(self, path: str) -> str:
        """A user-facing location for a path (local path, or the root's scheme)."""
        if "://" not in self.root:
            return path
        scheme = self.root.split("://", 1)[0]
        return f"{scheme}://{path}"

    # ----------------------------------------------------------------------------------------------------- writes
    def write_parquet(self, path: str, table: pa.Table, summary: dict[str, Any] | None = None,
                      row_group_size: int = 256) -> None:
        """Write a table atomically: to a temporary name in the same directory, then rename.

        Args:
            path: the final path.
            table: the rows (may be empty; the schema is kept).
            summary: JSON-able summary stored in the Parquet footer under `atelier.summary`.
            row_group_size: rows per row group.
        """
        if summary is not None:
            meta = dict(table.schema.metadata or {})
            meta[SUMMARY_KEY] = json.dumps(summary, sort_keys=True).encode()
            table = table.replace_schema_metadata(meta)
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        try:
            with self.fs.open_output_stream(tmp) as out:
                # Image bytes are already compressed: zstd there only burns CPU; everything else compresses well.
                compression = {name: "none" if name == "image" else "zstd" for name in table.schema.names}
                pq.write_table(table, out, row_group_size=row_group_size, compression=compression)
            self.fs.move(tmp, path)
        except BaseException:
            self._delete_quietly(tmp)
            raise

    def write_json(self, path: str, obj: Any) -> None:
        """Write a JSON document atomically."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(json.dumps(obj, indent=2, sort_keys=True, default=str).encode())
        self.fs.move(tmp, path)

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write a blob (e.g. a serialised faiss index) atomically."""
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    def read_bytes(self, path: str) -> bytes | None:
        """A blob, or None if there is none."""
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def delete_dir(self, directory: str) -> None:
        """Remove a directory tree if it exists."""
        if self.fs.get_file_info(directory).type == pafs.FileType.Directory:
            self.fs.delete_dir(directory)

    def _delete_quietly(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    # ------------------------------------------------------------------------------------------------------ reads
    def exists(self, path: str) -> bool:
        """True if a file exists at `path`."""
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def read_json(self, path: str) -> Any | None:
        """A JSON document, or None if there is none."""
        if not self.exists(path):
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def part_summary(self, path: str) -> dict[str, Any] | None:
        """The summary stored in a finished part's footer, or None if the part does not exist or is unreadable."""
        if not self.exists(path):
            return None
        try:
            with self.fs.open_input_file(path) as f:
                meta = pq.read_schema(f).metadata or {}
        except (pa.ArrowInvalid, OSError):
            return None  # a half-written part cannot exist (atomic rename), but a foreign file might
        raw = meta.get(SUMMARY_KEY)
        return json.loads(raw) if raw else None

    def read_part(self, path: str, columns: list[str] | None = None) -> pa.Table:
        """One Parquet file."""
        with self.fs.open_input_file(path) as f:
            return pq.read_table(f, columns=columns)

    def list_parts(self, directory: str) -> list[str]:
        """Finished Parquet parts in a directory, sorted (temporary files excluded)."""
        selector = pafs.FileSelector(directory, allow_not_found=True)
        return sorted(
            info.path for info in self.fs.get_file_info(selector)
            if info.type == pafs.FileType.File and posixpath.basename(info.path).startswith("part-")
            and info.path.endswith(".parquet")
        )

    def list_partitions(self, asset: str) -> list[str]:
        """Partition directories of an asset."""
        selector = pafs.FileSelector(self.asset_dir(asset), allow_not_found=True)
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(selector)
                      if i.type == pafs.FileType.Directory)

    def remove_parts_from(self, directory: str, first_index: int) -> list[str]:
        """Delete parts numbered `first_index` and above (left by an earlier, larger plan) and stray temp files."""
        removed = []
        selector = pafs.FileSelector(directory, allow_not_found=True)
        for info in self.fs.get_file_info(selector):
            name = posixpath.basename(info.path)
            stale_tmp = ".tmp-" in name
            stale_part = name.startswith("part-") and name.endswith(".parquet") and int(name[5:10]) >= first_index
            if info.type == pafs.FileType.File and (stale_part or stale_tmp):
                self._delete_quietly(info.path)
                removed.append(info.path)
        return removed

    def read_table(self, directory: str, columns: list[str] | None = None,
                   filter: pads.Expression | None = None, schema: pa.Schema | None = None) -> pa.Table:
        """Read the parts under a directory (recursively) as one table; empty if there are none.

        Args:
            directory: an asset, partition or ledger directory.
            columns: columns to read (all when None).
            filter: a pyarrow dataset filter, pushed down to the Parquet reader.
            schema: the expected schema, used for an empty result.
        """
        selector = pafs.FileSelector(directory, allow_not_found=True, recursive=True)
        paths = sorted(i.path for i in self.fs.get_file_info(selector)
                       if i.type == pafs.FileType.File and posixpath.basename(i.path).startswith("part-")
                       and i.path.endswith(".parquet"))
        if not paths:
            empty = schema or pa.schema([])
            if columns:
                empty = pa.schema([empty.field(c) for c in columns if c in empty.names])
            return empty.empty_table()
        dataset = pads.dataset(paths, filesystem=self.fs, format="parquet", schema=schema)
        return dataset.to_table(columns=columns, filter=filter)

    def read_decisions(self, asset: str | None = None, filter: pads.Expression | None = None) -> pa.Table:
        """The ledger of one asset (or of all assets), optionally filtered."""
        directory = self.asset_dir(f"decisions/{asset}" if asset else "decisions")
        return self.read_table(directory, filter=filter, schema=DECISIONS_SCHEMA)

    # ----------------------------------------------------------------------------------------------------- locking
    @contextlib.contextmanager
    def lock(self, name: str, owner: str = ""):
        """Hold `<root>/_locks/<name>.lock` while a run commits a global asset or a stage partition.

        Parts are atomic on their own; the lock keeps two runs of the same global asset from interleaving their
        increments. A second run fails at once naming the holder. A lock left by a dead process on this host is
        taken over. On object stores (no atomic create) the lock is written and read back: best effort.
        """
        path = posixpath.join(self.base, "_locks", f"{name}.lock")
        record = {"owner": owner, "pid": os.getpid(), "host": socket.gethostname(),
                  "since": datetime.datetime.now(datetime.UTC).isoformat()}
        self.fs.create_dir(posixpath.dirname(path), recursive=True)
        for _ in range(2):
            if self._create_exclusive(path, record):
                break
            holder = self.read_json(path) or {}
            if holder.get("host") == record["host"] and not _alive(holder.get("pid")):
                self._delete_quietly(path)  # its process is gone: the lock is stale
                continue
            raise RuntimeError(f"{name} is being written by another run ({holder.get('owner') or 'unknown run'}, "
                               f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}); "
                               f"wait for it, or delete {self.uri(path)} if that run is dead")
        try:
            yield
        finally:
            self._delete_quietly(path)

    def _create_exclusive(self, path: str, record: dict[str, Any]) -> bool:
        payload = json.dumps(record).encode()
        if "://" not in self.root:
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            return True
        if self.exists(path):
            return False
        self.write_bytes(path, payload)
        return self.read_json(path) == record

    # ----------------------------------------------------------------------------------------- source drop registry
    def register_source(self, partition: str, uri: str) -> None:
        """Remember which source drop a partition key stands for."""
        path = posixpath.join(self.base, "_sources", f"{partition}.json")
        current = self.read_json(path)
        if current and current.get("uri") == uri:
            return
        if current:
            raise ValueError(f"partition {partition!r} is already registered for {current['uri']!r}, not {uri!r}")
        self.write_json(path, {"partition": partition, "uri": uri,
                               "registered_at": datetime.datetime.now(datetime.UTC).isoformat()})

    def source_uri(self, partition: str) -> str:
        """The source drop of a partition key.

        Raises:
            KeyError: the partition was never registered (by `curate run --source` or the source sensor).
        """
        record = self.read_json(posixpath.join(self.base, "_sources", f"{partition}.json"))
        if record is None:
            raise KeyError(
                f"source drop {partition!r} is not registered under {self.root}; register it with "
                f"`curate run --source PATH` or let the source sensor find it"
            )
        return record["uri"]

    def registration_order(self) -> list[str]:
        """Registered partition keys, earliest registration first (ties by key)."""
        selector = pafs.FileSelector(posixpath.join(self.base, "_sources"), allow_not_found=True)
        records = [self.read_json(i.path) for i in self.fs.get_file_info(selector) if i.path.endswith(".json")]
        return [r["partition"] for r in sorted(records, key=lambda r: (r.get("registered_at", ""), r["partition"]))]

    def registered_sources(self) -> dict[str, str]:
        """All registered drops, partition key -> URI."""
        selector = pafs.FileSelector(posixpath.join(self.base, "_sources"), allow_not_found=True)
        out = {}
        for info in self.fs.get_file_info(selector):
            if info.path.endswith(".json"):
                record = self.read_json(info.path)
                out[record["partition"]] = record["uri"]
        return dict(sorted(out.items()))


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True
