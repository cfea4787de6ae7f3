"""The Ray adapter: unit tasks retry after failures, actor pools never take every CPU."""

from __future__ import annotations

import os

import pyarrow as pa
import pytest

from orchestration.ray_adapter import StageResources, actor_pool_size, map_stage, run_units

pytestmark = pytest.mark.slow


def _flaky(task):
    marker, value = task
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise RuntimeError("first attempt fails")
    return value * 2


def test_run_units_retries_a_failed_unit(ray_session, tmp_path):
    tasks = [(str(tmp_path / f"m{i}"), i) for i in range(4)]
    assert sorted(run_units(_flaky, tasks, num_cpus=1.0, max_retries=2)) == [0, 2, 4, 6]


def _negate(x: int) -> int:
    return -x


def test_run_units_reports_progress_and_handles_nothing(ray_session):
    seen = []
    assert sorted(run_units(_negate, [1, 2, 3], progress=lambda d, t: seen.append((d, t)))) == [-3, -2, -1]
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert list(run_units(_negate, [])) == []


def test_actor_pool_leaves_room_for_reads():
    assert actor_pool_size(StageResources(num_cpus=1.0), cpus=2) == 1
    assert actor_pool_size(StageResources(num_cpus=0.5), cpus=2) == 2
    assert actor_pool_size(StageResources(num_cpus=1.0), cpus=16) == 15
    assert actor_pool_size(StageResources(num_cpus=1.0, max_actors=4), cpus=16) == 4
    assert actor_pool_size(StageResources(num_cpus=4.0), cpus=2) == 1


class _Doubler:
    name = "doubler"
    resources = StageResources(num_cpus=1.0, batch_size=8)

    def __init__(self) -> None:
        self.factor = None

    def setup(self) -> None:
        self.factor = 2

    def process_batch(self, table: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        return table.set_column(0, "x", pc.multiply(table.column("x"), self.factor))


def test_map_stage_runs_setup_once_per_actor_without_deadlock(ray_session):
    import ray

    ds = ray.data.from_arrow(pa.table({"x": list(range(40))}))
    out = map_stage(ds, _Doubler()).to_arrow_refs()
    values = sorted(v for ref in out for v in ray.get(ref).column("x").to_pylist())
    assert values == [2 * i for i in range(40)]


def _dies_once(task):
    marker, value = task
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the worker process dies mid-task, as when a node is lost or the OOM killer strikes
    return value + 100


def test_a_killed_worker_is_retried_without_losing_or_duplicating_results(ray_session, tmp_path):
    tasks = [(str(tmp_path / f"k{i}"), i) for i in range(3)]
    assert sorted(run_units(_dies_once, tasks, num_cpus=1.0, max_retries=2)) == [100, 101, 102]


class _Counter:
    name = "counter"
    resources = StageResources(num_cpus=0.5, batch_size=1)

    def setup(self) -> None:
        self.loaded = True

    def process_batch(self, table: pa.Table) -> pa.Table:
        return table


def _actor_dies_once(stage, task):
    marker, value = task
    assert stage.loaded
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)  # the actor dies; Ray restarts it (setup runs again) and retries the task
    return value * 10


def test_a_killed_actor_is_restarted_and_its_task_retried(ray_session, tmp_path):
    from orchestration.ray_adapter import run_units_on_actors

    tasks = [(str(tmp_path / f"a{i}"), i) for i in range(4)]
    assert sorted(run_units_on_actors(_Counter(), _actor_dies_once, tasks)) == [0, 10, 20, 30]
