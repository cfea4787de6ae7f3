"""A damaged part never blocks a rerun: the stage runner reuses a unit only when its data AND ledger parts both have
an intact footer for the unit, and recomputes both otherwise (a truncated ledger part used to fail every rerun)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from curation.decisions import Decision, StageCounts
from orchestration.stage_runner import PartStage, Unit, UnitOutput, execute_unit, finished_summary, run_stage
from orchestration.storage import TableStore


def _setup():
    return None


def _process(state, store, payload):
    """Unit payload n: n inputs, the first dropped, the rest kept."""
    counts = StageCounts(total=payload, kept=payload - 1)
    counts.dropped["too_small"] = 1
    return UnitOutput(pa.table({"x": list(range(1, payload))}),
                      [Decision(None, f"mem://{payload}/0", "ingest", "drop", "too_small")], counts)


def _stage() -> PartStage:
    return PartStage("damage_probe", "p", "v1", "cfg", setup=_setup, process=_process)


def _truncate(store: TableStore, path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.mark.parametrize("damaged", ["decisions/damage_probe", "damage_probe"])
def test_a_truncated_part_makes_the_unit_unfinished(storage, damaged):
    store, stage = TableStore(storage), _stage()
    units = [Unit(i, 3 + i, f"fp{i}", 3 + i) for i in range(2)]
    for unit in units:
        execute_unit(stage, None, store, unit, "run-1")
    assert all(finished_summary(store, stage, u) for u in units)
    _truncate(store, store.part_path(damaged, "p", 1))
    assert finished_summary(store, stage, units[0]) is not None
    assert finished_summary(store, stage, units[1]) is None


@pytest.mark.slow
def test_run_stage_recomputes_both_parts_after_a_truncated_ledger(storage, ray_session):
    store, stage = TableStore(storage), _stage()
    units = [Unit(i, 3 + i, f"fp{i}", 3 + i) for i in range(3)]
    first = run_stage(store, stage, units, "run-1")
    assert first.accounting_passed and first.reused == 0
    _truncate(store, store.part_path("decisions/damage_probe", "p", 2))
    again = run_stage(store, stage, units, "run-2")  # used to fail: `Parquet magic bytes not found`
    assert again.accounting_passed and again.reused == 2 and again.computed_inputs == 5
    assert store.part_summary(store.part_path("damage_probe", "p", 2))["run_id"] == "run-2"
    assert store.part_summary(store.part_path("decisions/damage_probe", "p", 2))["run_id"] == "run-2"
    assert again.accounting == {**again.accounting, "planned_inputs": 12, "rows": 9, "dropped": 3}
