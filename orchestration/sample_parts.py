"""Global assets keyed by `sample_id` that grow with the curated set (OCR, captions, prompt variants).

Each sample is computed once per configuration: a run reads which samples the finished parts already hold, computes
only the missing ones into new parts (one Ray task per part, each written atomically), and leaves finished parts
alone; a changed configuration or code version retires every part written under the old one. A killed run therefore
resumes where it stopped, and a rerun with nothing new writes nothing. Readers take the rows of the samples that are
still wanted (a sample dropped later by rebalancing or an opt-out stays cached but is no longer part of the asset).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads

from orchestration.storage import TableStore


@dataclass(frozen=True)
class PartPlan:
    """One part to compute: its index and the samples it holds."""

    index: int
    sample_ids: list[str]


def _index(path: str) -> int:
    return int(posixpath.basename(path)[5:10])


def plan_sample_parts(store: TableStore, asset: str, config_hash: str, wanted: list[str],
                      rows_per_part: int) -> tuple[set[str], list[PartPlan], int]:
    """(samples already done, parts to compute, parts retired because their configuration changed)."""
    directory = store.dir(asset)
    store.remove_parts_from(directory, 10**5)  # temp files of a run that died mid-write
    retired = 0
    parts = []
    for path in store.list_parts(directory):
        summary = store.part_summary(path) or {}
        if summary.get("config_hash") != config_hash:
            store._delete_quietly(path)
            store._delete_quietly(posixpath.join(store.decisions_dir(asset), posixpath.basename(path)))
            retired += 1
        else:
            parts.append(path)
    done = set(store.read_table(directory, columns=["sample_id"]).column("sample_id").to_pylist()) if parts else set()
    missing = list(dict.fromkeys(s for s in wanted if s not in done))
    start = max((_index(p) for p in parts), default=-1) + 1
    plans = [PartPlan(start + k, missing[i:i + rows_per_part])
             for k, i in enumerate(range(0, len(missing), rows_per_part))]
    return done, plans, retired


def current_rows(store: TableStore, asset: str, wanted: list[str] | None = None,
                 columns: list[str] | None = None) -> pa.Table:
    """The asset's rows for the wanted samples (all when None), one row per sample, in part order."""
    directory = store.dir(asset)
    condition = pads.field("sample_id").isin(wanted) if wanted is not None else None
    table = store.read_table(directory, columns=columns, filter=condition)
    if table.num_rows == 0:
        return table
    # one row per sample even if two concurrent runs both computed it
    return table.filter(_first_occurrence(table.column("sample_id")))


def _first_occurrence(ids: pa.ChunkedArray) -> pa.Array:
    seen: set[str] = set()
    mask = []
    for sid in ids.to_pylist():
        mask.append(sid not in seen)
        seen.add(sid)
    return pa.array(mask)


def read_images(store: TableStore, refs: dict[str, list[str]],
                columns: tuple[str, ...] = ("sample_id", "source_uri", "image", "metadata", "licence")) -> pa.Table:
    """`source_images` rows of the given samples, by source drop: {partition: [sample_id, ...]}."""
    tables = []
    for partition, ids in refs.items():
        if ids:
            t = store.read_table(store.dir("source_images", partition), columns=list(columns),
                                 filter=pads.field("sample_id").isin(ids))
            tables.append(t)
    if not tables:
        return pa.table({c: pa.array([], pa.string()) for c in columns})
    table = pa.concat_tables(tables)
    return table.filter(_first_occurrence(table.column("sample_id")))
