"""Reading only the rows a task needs, so bytes read per image stay constant as the corpus grows.

Sample ids are random hashes: a filter `sample_id in {...}` over a whole partition prunes no row group and reads every
image of the drop. Instead, the driver builds a `SampleLocator` (sample id -> part file and row number) from the
`sample_id` column alone (about 70 bytes per image, read once per materialization), plans work units along the parts
it points to, and each task reads just the row groups that hold its rows (`read_located`).
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from orchestration.storage import TableStore


@dataclass
class ReadStats:
    """Bytes a task read from storage (compressed column chunks of the row groups it opened)."""

    bytes: int = 0
    rows: int = 0


@dataclass(frozen=True)
class SampleLocator:
    """Where each sample's row lives: sample_id -> (part path, row number in that part)."""

    rows: dict[str, tuple[str, int]] = field(default_factory=dict)

    @classmethod
    def build(cls, store: TableStore, directories: Iterable[str], wanted: set[str] | None = None) -> SampleLocator:
        """Index the parts under `directories` by reading their `sample_id` column only.

        The first occurrence wins when a sample appears twice (two concurrent runs both computed it).

        Args:
            store: the storage root.
            directories: partition directories of one asset (e.g. `store.dir("source_images", drop)`).
            wanted: index only these samples (None: all).
        """
        rows: dict[str, tuple[str, int]] = {}
        for directory in directories:
            for path in store.list_parts(directory):
                ids = store.read_part(path, ["sample_id"]).column("sample_id").to_pylist()
                for row, sid in enumerate(ids):
                    if (wanted is None or sid in wanted) and sid not in rows:
                        rows[sid] = (path, row)
        return cls(rows)

    def __contains__(self, sample_id: str) -> bool:
        return sample_id in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def group(self, sample_ids: Iterable[str]) -> dict[str, list[int]]:
        """{part path: sorted row numbers} of the given samples (unknown ids are left out)."""
        out: dict[str, list[int]] = {}
        for sid in sample_ids:
            loc = self.rows.get(sid)
            if loc is not None:
                out.setdefault(loc[0], []).append(loc[1])
        return {path: sorted(set(rows)) for path, rows in sorted(out.items())}

    def order(self, sample_ids: Iterable[str]) -> list[str]:
        """The known samples sorted by (part, row): units cut from this order read few row groups each."""
        known = [s for s in sample_ids if s in self.rows]
        return sorted(known, key=lambda s: self.rows[s])


def read_rows(store: TableStore, path: str, rows: list[int], columns: list[str],
              stats: ReadStats | None = None) -> pa.Table:
    """Rows `rows` (row numbers within the part) of one Parquet part, reading only the row groups that hold them.

    Args:
        store: the storage root.
        path: the part file.
        rows: row numbers, in the order wanted (duplicates allowed).
        columns: columns to read.
        stats: accumulates the bytes read.
    """
    with store.fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        meta = parquet.metadata
        starts, total = [], 0
        for g in range(meta.num_row_groups):
            starts.append(total)
            total += meta.row_group(g).num_rows
        if any(r < 0 or r >= total for r in rows):
            raise IndexError(f"{path}: row out of range (part has {total} rows)")
        groups = sorted({bisect.bisect_right(starts, r) - 1 for r in rows})
        table = parquet.read_row_groups(groups, columns=columns) if groups else parquet.schema_arrow.empty_table()
        if stats is not None:
            stats.bytes += _chunk_bytes(meta, groups, set(columns))
            stats.rows += len(rows)
    base, local = {}, 0
    for g in groups:
        base[g] = local
        local += meta.row_group(g).num_rows
    take = [base[bisect.bisect_right(starts, r) - 1] + r - starts[bisect.bisect_right(starts, r) - 1] for r in rows]
    return table.select(columns).take(pa.array(take, pa.int64()))


def read_located(store: TableStore, located: dict[str, list[int]], columns: list[str],
                 stats: ReadStats | None = None, schema: pa.Schema | None = None) -> pa.Table:
    """The rows of `SampleLocator.group(...)` output, part after part.

    Args:
        store: the storage root.
        located: {part path: row numbers}.
        columns: columns to read.
        stats: accumulates the bytes read.
        schema: the asset's schema, for an empty result.
    """
    tables = [read_rows(store, path, rows, columns, stats) for path, rows in located.items() if rows]
    if not tables:
        if schema is not None:
            return pa.schema([schema.field(c) for c in columns]).empty_table()
        return pa.table({c: pa.array([], pa.null()) for c in columns})
    return pa.concat_tables(tables, promote_options="permissive")


def read_samples(store: TableStore, locator: SampleLocator, sample_ids: Iterable[str], columns: list[str],
                 stats: ReadStats | None = None) -> dict[str, dict]:
    """{sample_id: row dict} of the given samples, read through the locator (driver-side helper: thumbnails)."""
    cols = list(dict.fromkeys(["sample_id", *columns]))
    table = read_located(store, locator.group(sample_ids), cols, stats)
    return {r["sample_id"]: r for r in table.to_pylist()}


def _chunk_bytes(meta: pq.FileMetaData, groups: Iterable[int], columns: set[str]) -> int:
    total = 0
    for g in groups:
        group = meta.row_group(g)
        total += sum(group.column(c).total_compressed_size for c in range(group.num_columns)
                     if group.column(c).path_in_schema.split(".", 1)[0] in columns)
    return total


def iter_part(store: TableStore, path: str, columns: list[str], batch_size: int,
              stats: ReadStats | None = None):
    """A whole part's rows in batches of `batch_size` (a worker reading its upstream part), counting bytes read."""
    with store.fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        if stats is not None:
            stats.bytes += _chunk_bytes(parquet.metadata, range(parquet.metadata.num_row_groups), set(columns))
            stats.rows += parquet.metadata.num_rows
        for batch in parquet.iter_batches(batch_size=batch_size, columns=columns):
            yield pa.Table.from_batches([batch])


def read_part(store: TableStore, path: str, columns: list[str], stats: ReadStats | None = None) -> pa.Table:
    """A whole part's columns (empty parts included), counting bytes read."""
    with store.fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        if stats is not None:
            stats.bytes += _chunk_bytes(parquet.metadata, range(parquet.metadata.num_row_groups), set(columns))
            stats.rows += parquet.metadata.num_rows
        return parquet.read(columns=columns)


def part_rows(store: TableStore, path: str) -> int:
    """Rows of one Parquet part, from its footer alone."""
    with store.fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows
