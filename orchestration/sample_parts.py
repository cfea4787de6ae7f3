"""Global assets keyed by `sample_id` that grow with the curated set (OCR, captions, prompt variants), and the reads
of curated samples' source rows.

Each sample is computed once per configuration: a run reads which samples the finished parts already hold, computes
only the missing ones into new parts (one runner unit per part, written atomically with its ledger part), and leaves
finished parts alone; a changed configuration or code version retires every part written under the old one. A killed
run therefore resumes where it stopped, and a rerun with nothing new writes nothing. Readers take the rows of the
samples that are still wanted (a sample dropped later by rebalancing or an opt-out stays cached but is no longer part
of the asset).

New parts are cut in source order (drop, part, row) so that each unit reads few row groups of `source_images`: bytes
read per image stay constant as the corpus grows (`orchestration/reads.py`).
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads

from orchestration.reads import ReadStats, SampleLocator, read_located
from orchestration.stage_runner import Unit, config_hash
from orchestration.storage import SUCCESS_MARKER, TableStore

SOURCE = "source_images"
REBALANCED = "rebalanced_images"


@dataclass(frozen=True)
class PartPlan:
    """One part to compute: its index and the samples it holds."""

    index: int
    sample_ids: list[str]


def _index(path: str) -> int:
    return int(posixpath.basename(path)[5:10])


def plan_sample_parts(store: TableStore, asset: str, config_hash: str, wanted: list[str], rows_per_part: int,
                      locator: SampleLocator | None = None) -> tuple[set[str], list[PartPlan], int]:
    """(samples already done, parts to compute, parts retired because their configuration changed).

    Args:
        locator: where the samples' input rows live; the missing samples are cut into parts in that order.
    """
    if rows_per_part < 1:
        raise ValueError(f"{asset}: rows_per_part must be >= 1, got {rows_per_part}")
    directory = store.dir(asset)
    store.remove_parts_from(directory, 10**5)  # temp files of a run that died mid-write
    retired = 0
    parts = []
    for path in store.list_parts(directory):
        summary = store.part_summary(path) or {}
        ledger = posixpath.join(store.decisions_dir(asset), posixpath.basename(path))
        if summary.get("config_hash") != config_hash or not store.part_summary(ledger):
            store._delete_quietly(path)  # stale, or its ledger part is damaged: both recomputed
            store._delete_quietly(ledger)
            retired += 1
        else:
            parts.append(path)
    done = set(store.read_table(directory, columns=["sample_id"]).column("sample_id").to_pylist()) if parts else set()
    missing = list(dict.fromkeys(s for s in wanted if s not in done))
    if locator is not None:
        located = locator.order(missing)
        missing = located + [s for s in missing if s not in locator]
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


def source_locator(store: TableStore, partitions: Iterable[str], wanted: Iterable[str] | None = None) -> SampleLocator:
    """Where the wanted samples' `source_images` rows are, over the given source drops."""
    dirs = [store.dir(SOURCE, p) for p in sorted(set(partitions))]
    return SampleLocator.build(store, dirs, set(wanted) if wanted is not None else None)


def asset_locator(store: TableStore, asset: str, wanted: Iterable[str] | None = None) -> SampleLocator:
    """Where the wanted samples' rows of a sample-keyed (unpartitioned) asset are."""
    return SampleLocator.build(store, [store.dir(asset)], set(wanted) if wanted is not None else None)


def read_source_rows(store: TableStore, source_of: dict[str, str], columns: Iterable[str],
                     stats: ReadStats | None = None) -> dict[str, dict]:
    """{sample_id: row} of the given samples' `source_images` rows ({sample_id: source drop}), reading only the row
    groups that hold them (driver-side reads: thumbnails, opt-out metadata)."""
    if not source_of:
        return {}
    locator = source_locator(store, source_of.values(), source_of)
    cols = list(dict.fromkeys(["sample_id", *columns]))
    table = read_located(store, locator.group(source_of), cols, stats)
    return {r["sample_id"]: r for r in table.to_pylist()}


@dataclass(frozen=True)
class Curated:
    """The samples kept by rebalancing: sorted ids, and each one's source drop and source URI."""

    ids: list[str]
    source: dict[str, str]
    uri: dict[str, str]


def curated_samples(store: TableStore) -> Curated:
    """The kept samples after rebalancing."""
    table = store.read_table(store.dir(REBALANCED), columns=["sample_id", "source", "source_uri", "kept"])
    if table.num_rows == 0 and not store.exists(f"{store.dir(REBALANCED)}/{SUCCESS_MARKER}"):
        raise RuntimeError("materialize rebalanced_images (and its upstream assets) first")
    kept = table.filter(table.column("kept")).to_pylist()
    return Curated(sorted(r["sample_id"] for r in kept), {r["sample_id"]: r["source"] for r in kept},
                   {r["sample_id"]: r["source_uri"] for r in kept})


def sample_units(plans: list[PartPlan], curated: Curated, locator: SampleLocator, chash: str,
                 extra: tuple = ()) -> list[Unit]:
    """One runner unit per planned part: its (sample_id, source_uri) pairs and where their input rows are."""
    units = []
    for plan in plans:
        wanted = [(sid, curated.uri.get(sid, "")) for sid in plan.sample_ids]
        units.append(Unit(plan.index, (wanted, locator.group(plan.sample_ids), *extra),
                          config_hash([chash, plan.sample_ids]), len(wanted)))
    return units
