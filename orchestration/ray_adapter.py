"""The one place where pipeline code meets Ray.

Two shapes of work:
- `run_units`: independent work units (one per Parquet part) as Ray tasks with retries; each task writes its own part,
  so nothing large flows back through the driver, and a retried task rewrites the same part atomically.
- `map_stage`: a `Stage` (setup once per actor, `process_batch(table) -> table`) as Ray Data `map_batches` over an
  actor pool sized so that it can never hold every CPU (on 2 cores a full pool deadlocks the read tasks).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

import pyarrow as pa

from curation.stage import StageResources

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class Stage(Protocol):
    """A processing step, independent of any executor (datatrove / NeMo Curator style)."""

    name: str
    resources: StageResources

    def setup(self) -> None:
        """Load models or other per-worker state (called once per actor)."""

    def process_batch(self, table: pa.Table) -> pa.Table:
        """Transform one batch of rows."""


LISTEN_ALL_ENV = "ATELIER_RAY_LISTEN_ALL"
"""Set to 1 (`curate run --ray-listen-all`) to let an embedded Ray listen on the node's address, not loopback only."""
_RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _keep_embedded_ray_on_loopback() -> None:
    """Make an embedded Ray bind every server (GCS, raylet, workers, agents) to 127.0.0.1.

    Ray (2.60) binds its gRPC servers to the wildcard address unless the node's IP is loopback, and `ray.init` turns
    an explicit 127.0.0.1 into the machine's address. Its single-machine mode (the default on macOS/Windows,
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) keeps the node on loopback; the constant is read when `ray` is imported,
    so it is also set on the module in case `ray` was imported before this call.
    """
    os.environ[_RAY_LOOPBACK_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(num_cpus: int | None = None, **options: Any) -> bool:
    """Start (or join) Ray once per process; returns True if this call started it.

    `RAY_ADDRESS` in the environment joins an existing cluster; otherwise an embedded local cluster is started with
    the machine's CPUs, listening on loopback only (unless `ATELIER_RAY_LISTEN_ALL=1`).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "logging_level": logging.WARNING, **options}
    if not os.environ.get("RAY_ADDRESS"):
        # nothing outside this machine can reach a loopback-only cluster, so Ray's token auth adds nothing here
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if os.environ.get(LISTEN_ALL_ENV) != "1":
            _keep_embedded_ray_on_loopback()
        kwargs.setdefault("num_cpus", num_cpus or os.cpu_count() or 1)
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("dashboard_host", "127.0.0.1")
    ray.init(**kwargs)
    return True


def cluster_cpus() -> float:
    """CPUs of the connected cluster."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


def run_units(fn: Callable[[T], R], units: Iterable[T], *, num_cpus: float = 1.0, max_retries: int = 3,
              max_in_flight: int | None = None, progress: Callable[[int, int], None] | None = None) -> Iterator[R]:
    """Run `fn(unit)` for every unit as Ray tasks; yield results as they finish (not in submission order).

    Tasks are retried on worker death (`max_retries`), and on exceptions too, since a unit's output is written
    atomically and a retry simply rewrites it.

    Args:
        fn: a picklable top-level function.
        units: its inputs.
        num_cpus: CPUs per task.
        max_retries: retries of a failed or lost task.
        max_in_flight: most tasks submitted at once (default: twice the cluster's task slots).
        progress: called with (done, total) after each result.
    """
    import ray

    pending_units = list(units)
    total = len(pending_units)
    if total == 0:
        return
    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=True)(fn)
    limit = max_in_flight or max(2, 2 * int(cluster_cpus() // max(num_cpus, 1e-3)))
    in_flight: list[Any] = []
    done = 0
    next_index = 0
    while next_index < total or in_flight:
        while next_index < total and len(in_flight) < limit:
            in_flight.append(remote.remote(pending_units[next_index]))
            next_index += 1
        ready, in_flight = ray.wait(in_flight, num_returns=1)
        for ref in ready:
            result = ray.get(ref)
            done += 1
            if progress:
                progress(done, total)
            yield result


def actor_pool_size(resources: StageResources, cpus: float, reserve_cpus: float = 1.0) -> int:
    """Actors that fit while leaving `reserve_cpus` for Ray Data's read and write tasks (at least one actor)."""
    usable = max(cpus - reserve_cpus, resources.num_cpus)
    size = max(1, math.floor(usable / max(resources.num_cpus, 1e-3)))
    return min(size, resources.max_actors) if resources.max_actors else size


class _StageActor:
    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch: pa.Table) -> pa.Table:
        return self.stage.process_batch(batch)


def map_stage(dataset: Any, stage: Stage) -> Any:
    """Apply a `Stage` to a Ray Dataset with an actor pool (one `setup()` per actor).

    Args:
        dataset: a `ray.data.Dataset` of Arrow batches.
        stage: the step to run.

    Returns:
        The transformed (lazy) dataset.
    """
    from ray.data import ActorPoolStrategy

    res = stage.resources
    size = actor_pool_size(res, cluster_cpus())
    log.info("stage %s: %d actor(s), %.2f CPU / %.2f GPU each", stage.name, size, res.num_cpus, res.num_gpus)
    return dataset.map_batches(
        _StageActor,
        fn_constructor_args=(stage,),
        batch_size=res.batch_size,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=size),
        num_cpus=res.num_cpus,
        num_gpus=res.num_gpus or None,
    )


class _UnitActor:
    """Holds one set-up stage; runs `fn(stage, task)` for each task it is given."""

    def __init__(self, stage: Stage) -> None:
        self.stage = stage
        self.stage.setup()

    def run(self, fn: Callable[[Any, Any], Any], task: Any) -> Any:
        return fn(self.stage, task)


def run_units_on_actors(stage: Stage, fn: Callable[[Any, T], R], units: Iterable[T], *,
                        progress: Callable[[int, int], None] | None = None) -> Iterator[R]:
    """Run `fn(stage, unit)` for every unit on a pool of actors that each `setup()` the stage once (load a model).

    Used where each unit must stay one output part (atomic, resumable) but the work needs a loaded model. The pool
    fills the cluster (no separate read tasks compete for CPUs here); dead actors are restarted and their task
    retried.

    Args:
        stage: the stage to set up in every actor (pickled to each).
        fn: a picklable top-level function of (set-up stage, unit).
        units: its inputs.
        progress: called with (done, total) after each result.
    """
    import ray
    from ray.util import ActorPool

    todo = list(units)
    if not todo:
        return
    res = stage.resources
    size = min(len(todo), actor_pool_size(res, cluster_cpus(), reserve_cpus=0.0))
    actor_cls = ray.remote(num_cpus=res.num_cpus, num_gpus=res.num_gpus or 0, max_restarts=2,
                           max_task_retries=2)(_UnitActor)
    actors = [actor_cls.remote(stage) for _ in range(size)]
    log.info("stage %s: %d actor(s) for %d unit(s)", stage.name, size, len(todo))
    try:
        pool = ActorPool(actors)
        for done, result in enumerate(pool.map_unordered(lambda a, u: a.run.remote(fn, u), todo), start=1):
            if progress:
                progress(done, len(todo))
            yield result
    finally:
        for actor in actors:
            ray.kill(actor)


class Throughput:
    """Items per second since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since construction."""
        return time.perf_counter() - self.start

    def per_second(self, items: int) -> float:
        """Rate over the elapsed wall time."""
        elapsed = self.elapsed()
        return items / elapsed if elapsed > 0 else 0.0
