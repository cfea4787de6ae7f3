"""The one stage runner: reuse by fingerprint, damaged parts recomputed, accounting against the plan, actors set up
once and restarted when they die, progress events, clear refusal of GPUs that are not there."""

from __future__ import annotations

import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation.decisions import Decision, StageCounts
from curation.stage import StageResources
from orchestration.reads import ReadStats, SampleLocator, read_located, read_rows
from orchestration.stage_runner import PartStage, Unit, UnitOutput, add_progress_listener, execute_unit, run_stage
from orchestration.storage import SUCCESS_MARKER, TableStore

pytestmark = pytest.mark.slow


class _State:
    def __init__(self, marker_dir: str) -> None:
        self.pid = os.getpid()
        self.marker_dir = marker_dir
        with open(os.path.join(marker_dir, f"setup-{os.getpid()}-{id(self)}"), "w"):
            pass


def _setup(marker_dir: str) -> _State:
    return _State(marker_dir)


def _process(state: _State, store: TableStore, payload: tuple) -> UnitOutput:
    """Keeps even numbers, drops odd ones; `die` makes the actor's process exit once (a lost node)."""
    values, die = payload
    if die and not os.path.exists(os.path.join(state.marker_dir, "died")):
        open(os.path.join(state.marker_dir, "died"), "w").close()
        os._exit(1)
    kept = [v for v in values if v % 2 == 0]
    decisions = [Decision(f"s{v}", f"u{v}", "ingest", "drop", "odd") for v in values if v % 2]
    counts = StageCounts(total=len(values), kept=len(kept))
    counts.dropped["odd"] = len(values) - len(kept)
    return UnitOutput(pa.table({"sample_id": [f"s{v}" for v in kept], "v": kept}), decisions, counts)


def _stage(tmp_path, **kw) -> PartStage:
    from functools import partial

    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    return PartStage("toy", "p", "toy-1", kw.pop("config_hash", "c1"), setup=partial(_setup, str(markers)),
                     process=_process, resources=StageResources(num_cpus=1.0), **kw)


def _units(n: int = 4, die_at: int | None = None) -> list[Unit]:
    return [Unit(i, (list(range(3 * i, 3 * i + 3)), i == die_at), f"fp{i}", 3) for i in range(n)]


def _setups(tmp_path) -> int:
    return len([p for p in os.listdir(tmp_path / "markers") if p.startswith("setup-")])


def test_runs_reuses_and_recomputes_a_damaged_pair(ray_session, tmp_path):
    store = TableStore(str(tmp_path / "store"))
    stage = _stage(tmp_path)
    seen = []
    remove = add_progress_listener(seen.append)
    try:
        report = run_stage(store, stage, _units(), "run-1")
    finally:
        remove()
    assert report.accounting_passed and report.counts.total == 12 and report.counts.kept == 6
    assert report.accounting == {"planned_inputs": 12, "rows": 6, "dropped": 6, "drops_without_reason": 0,
                                 "missing_parts": 0, "units": 4, "units_counted_by_their_reader": 0}
    assert [e.units_done for e in seen] == [1, 2, 3, 4] and seen[-1].inputs_done == 12
    assert "4/4 units" in seen[-1].line()
    assert _setups(tmp_path) <= 2  # once per actor (2 CPUs), not once per unit
    assert store.read_json(f"{store.dir('toy', 'p')}/{SUCCESS_MARKER}")["input_ids"] == ["fp0", "fp1", "fp2", "fp3"]

    again = run_stage(store, stage, _units(), "run-2")
    assert again.reused == 4 and again.computed_inputs == 0 and again.counts.kept == 6

    ledger = store.part_path("decisions/toy", "p", 2)  # a truncated ledger part: both files recomputed
    data = store.fs.open_input_file(ledger).read()
    with store.fs.open_output_stream(ledger) as f:
        f.write(data[: len(data) // 2])
    third = run_stage(store, stage, _units(), "run-3")
    assert third.reused == 3 and third.computed_inputs == 3 and third.accounting_passed
    assert store.part_summary(store.part_path("toy", "p", 2))["run_id"] == "run-3"

    changed = run_stage(store, _stage(tmp_path, config_hash="c2"), _units(2), "run-4")
    assert changed.reused == 0 and changed.units == 2
    assert len(store.list_parts(store.dir("toy", "p"))) == 2  # parts past the new plan are gone


def test_a_killed_actor_is_restarted_and_its_unit_retried(ray_session, tmp_path):
    store = TableStore(str(tmp_path / "store"))
    report = run_stage(store, _stage(tmp_path), _units(4, die_at=1), "run-1")
    assert os.path.exists(tmp_path / "markers" / "died")
    assert report.accounting_passed and report.counts.total == 12
    assert pq.read_table(store.fs.open_input_file(store.part_path("toy", "p", 1))).num_rows == 1


def test_lost_or_invented_inputs_are_refused_before_anything_is_written(tmp_path):
    store = TableStore(str(tmp_path / "store"))
    stage = _stage(tmp_path)
    with pytest.raises(RuntimeError, match="4 planned"):
        execute_unit(stage, _State(str(tmp_path / "markers")), store, Unit(0, ([0, 1, 2], False), "fp", 4), "r")
    assert not store.exists(store.part_path("toy", "p", 0))


def test_a_stage_asking_for_absent_gpus_fails_clearly(ray_session, tmp_path):
    store = TableStore(str(tmp_path / "store"))
    stage = PartStage("toy", "p", "v", "c", setup=_stage(tmp_path).setup, process=_process,
                      resources=StageResources(num_cpus=1.0, num_gpus=1.0))
    with pytest.raises(RuntimeError, match="GPU"):
        run_stage(store, stage, _units(1), "r")


def test_located_reads_open_only_the_row_groups_holding_the_rows(tmp_path):
    store = TableStore(str(tmp_path / "store"))
    table = pa.table({"sample_id": [f"s{i:03d}" for i in range(1000)], "blob": [bytes(1000) + bytes([i % 251])
                                                                                for i in range(1000)]})
    path = store.part_path("source_images", "d", 0)
    store.write_parquet(path, table, {}, row_group_size=100)
    locator = SampleLocator.build(store, [store.dir("source_images", "d")], {"s005", "s950", "s007"})
    assert len(locator) == 3 and locator.order(["s950", "s007", "s005", "nope"]) == ["s005", "s007", "s950"]
    stats = ReadStats()
    got = read_located(store, locator.group(["s950", "s005"]), ["sample_id", "blob"], stats)
    assert got.column("sample_id").to_pylist() == ["s005", "s950"]
    assert got.column("blob").to_pylist()[1][-1] == 950 % 251
    whole = ReadStats()
    read_rows(store, path, list(range(1000)), ["sample_id", "blob"], whole)
    assert 0 < stats.bytes <= whole.bytes * 2 / 10 + 1  # two row groups of ten
