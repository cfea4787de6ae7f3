"""The one stage runner: every part-wise asset declares a `PartStage` and calls `run_stage`.

A stage is declared, not hand-rolled (datatrove / NeMo Curator style): the asset plans its `Unit`s on the driver
(each one output part, with a fingerprint of its inputs and the number of inputs it must account for), names a
`setup()` that loads the model once per Ray actor and a `process(state, store, payload) -> UnitOutput` that reads the
unit's rows and calls pure code. `run_stage` does the rest, the same way for every stage:

- reuse: a unit whose data part AND ledger part both have a readable footer with the unit's fingerprint and the
  stage's config hash is not recomputed; a damaged or stale pair is recomputed (both files rewritten);
- execution on an actor pool (setup once per actor, dead actors restarted, their unit retried);
- atomic writes: the ledger part first, then the data part (temporary name + rename each), both carrying the unit's
  summary (counts, bytes read, seconds) in their footer;
- the accounting check read back from storage, against the PLANNED inputs, not what the workers reported;
- the completion marker, the standard metadata (counts, drops per reason, images/s, bytes read per image) and
  progress events (`add_progress_listener`; the asset's log at INFO at most every few seconds).

Actor pool rather than Ray Data streaming: each unit must stay one atomic, resumable part with its own ledger, and
measured on 2 cores (ARCHITECTURE.md) the pool matched `map_batches` throughput without its extra read/write tasks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import posixpath
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from curation.decisions import Decision, StageCounts, decisions_table
from curation.stage import StageResources
from orchestration.storage import SUCCESS_MARKER, TableStore

log = logging.getLogger(__name__)


def config_hash(obj: Any) -> str:
    """A short stable hash of a JSON-able description (config, code version, upstream identities)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Unit:
    """One output part: what `process` needs, the identity of its inputs and how many inputs it must account for."""

    index: int
    payload: Any
    fingerprint: str
    inputs: int | None
    """None where only the reader can count them (a tar's members): then its footer's count is used."""


def setup_model(load: Callable[[Any], Any], config: Any) -> Any:
    """`setup` for a stage with one model per actor: `load(config)`, then the model's own `setup()` if it has one.

    Use as `functools.partial(setup_model, load, config)` (both must be picklable: they travel to each actor)."""
    model = load(config)
    if hasattr(model, "setup"):
        model.setup()
    return model


@dataclass
class UnitOutput:
    """What `process` returns for one unit: rows of the data part, ledger decisions, counts, bytes it read."""

    rows: pa.Table
    decisions: list[Decision] = field(default_factory=list)
    counts: StageCounts = field(default_factory=StageCounts)
    bytes_read: int = 0


@dataclass(frozen=True)
class PartStage:
    """A part-wise stage, independent of how it is executed."""

    asset: str
    """Asset name: data under `<root>/<asset>/<partition>`, ledger under `<root>/decisions/<asset>/<partition>`."""
    partition: str | None
    """The partition written (None: unpartitioned)."""
    code_version: str
    """Recorded on every ledger row."""
    config_hash: str
    """Identity of the configuration (and code version, and upstream configurations); part of reuse."""
    setup: Callable[[], Any]
    """Picklable; runs once per actor and returns the worker state (a loaded model, or None)."""
    process: Callable[[Any, TableStore, Any], UnitOutput]
    """Picklable top-level function of (worker state, store, unit payload)."""
    resources: StageResources = field(default_factory=StageResources)
    """CPUs / GPUs per actor; declared, never probed."""
    rows_are: str = "kept"
    """'kept': the data part holds the kept inputs (inputs = rows + drops); 'all': one row per input (drops are
    flagged in the rows and listed in the ledger)."""
    append: bool = False
    """False: the units cover the whole partition (parts past the plan are stale and removed); True: units are new
    parts appended to an incremental, sample-keyed asset."""
    row_group_size: int = 256
    """Rows per Parquet row group of the data part."""
    write_marker: bool = True
    """Write `_SUCCESS.json` (with the input fingerprints) once every unit is done."""


@dataclass(frozen=True)
class Progress:
    """A progress event of a running stage."""

    asset: str
    partition: str | None
    units_done: int
    units_total: int
    inputs_done: int
    inputs_total: int
    dropped: int
    elapsed_s: float

    @property
    def per_second(self) -> float:
        """Inputs per second so far (computed units only)."""
        return self.inputs_done / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        """Seconds left at the current rate (None before the first unit)."""
        rate = self.per_second
        return (self.inputs_total - self.inputs_done) / rate if rate > 0 else None

    def line(self) -> str:
        """One human line."""
        eta = f", ETA {self.eta_s:.0f} s" if self.eta_s is not None and self.units_done < self.units_total else ""
        where = f"[{self.partition}]" if self.partition else ""
        return (f"{self.asset}{where}: {self.units_done}/{self.units_total} units, {self.inputs_done}/"
                f"{self.inputs_total} inputs, {self.per_second:.1f}/s{eta}, {self.dropped} dropped")


_LISTENERS: list[Callable[[Progress], None]] = []
_LISTENERS_LOCK = threading.Lock()


def add_progress_listener(listener: Callable[[Progress], None]) -> Callable[[], None]:
    """Receive every stage's progress events in this process (the CLI's live display); returns a remover."""
    with _LISTENERS_LOCK:
        _LISTENERS.append(listener)

    def remove() -> None:
        with _LISTENERS_LOCK:
            if listener in _LISTENERS:
                _LISTENERS.remove(listener)

    return remove


def _publish(event: Progress) -> None:
    with _LISTENERS_LOCK:
        listeners = list(_LISTENERS)
    for listener in listeners:
        try:
            listener(event)
        except Exception:  # a broken display must not fail the run
            log.exception("progress listener failed")


# ---------------------------------------------------------------------------------------------------------- worker
def execute_unit(stage: PartStage, state: Any, store: TableStore, unit: Unit, run_id: str) -> dict:
    """Process one unit and write its ledger part, then its data part; returns the unit's summary.

    Raises:
        RuntimeError: the process lost or invented inputs (a bug, never written).
    """
    start = time.perf_counter()
    out = stage.process(state, store, unit.payload)
    counts = out.counts
    drops = [d for d in out.decisions if d.decision == "drop"]
    expected_rows = counts.kept if stage.rows_are == "kept" else counts.total
    problems = []
    if unit.inputs is not None and counts.total != unit.inputs:
        problems.append(f"{counts.total} inputs counted, {unit.inputs} planned")
    if not counts.balanced():
        problems.append(f"total {counts.total} != kept {counts.kept} + dropped {counts.n_dropped}")
    if out.rows.num_rows != expected_rows:
        problems.append(f"{out.rows.num_rows} rows written, {expected_rows} expected")
    if len(drops) != counts.n_dropped or any(not d.reason for d in drops):
        problems.append(f"{len(drops)} drop decisions for {counts.n_dropped} counted drops")
    if problems:
        raise RuntimeError(f"{stage.asset} unit {unit.index}: accounting broken ({'; '.join(problems)})")
    summary = {"unit": unit.index, "fingerprint": unit.fingerprint, "config_hash": stage.config_hash,
               "run_id": run_id, "counts": counts.to_dict(), "inputs": unit.inputs, "bytes_read": out.bytes_read,
               "seconds": round(time.perf_counter() - start, 3)}
    store.write_parquet(store.part_path("decisions/" + stage.asset, stage.partition, unit.index),
                        decisions_table(out.decisions, run_id, stage.code_version), summary)
    store.write_parquet(store.part_path(stage.asset, stage.partition, unit.index), out.rows, summary,
                        stage.row_group_size)
    return summary


class _Worker:
    """A Ray actor holding one set-up stage."""

    def __init__(self, stage: PartStage) -> None:
        self.stage = stage
        self.state = stage.setup()

    def run(self, store: TableStore, unit: Unit, run_id: str) -> dict:
        return execute_unit(self.stage, self.state, store, unit, run_id)


def _pool_size(resources: StageResources, units: int) -> int:
    import ray

    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    size = max(1, math.floor(cpus / max(resources.num_cpus, 1e-3)))
    if resources.num_gpus:
        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        if gpus < resources.num_gpus:
            raise RuntimeError(f"the stage asks for {resources.num_gpus} GPU per actor but the Ray cluster has "
                               f"{gpus:g} GPU(s): set num_gpus_per_actor to 0 or join a cluster with GPUs")
        size = min(size, math.floor(gpus / resources.num_gpus))
    if resources.max_actors:
        size = min(size, resources.max_actors)
    return max(1, min(size, units))


def _run_on_actors(stage: PartStage, store: TableStore, units: Sequence[Unit], run_id: str):
    import ray
    from ray.util import ActorPool

    res = stage.resources
    size = _pool_size(res, len(units))
    actor_cls = ray.remote(num_cpus=res.num_cpus, num_gpus=res.num_gpus or 0, max_restarts=2,
                           max_task_retries=2)(_Worker)
    actors = [actor_cls.remote(stage) for _ in range(size)]
    log.info("stage %s: %d actor(s) for %d unit(s)", stage.asset, size, len(units))
    try:
        pool = ActorPool(actors)
        yield from pool.map_unordered(lambda a, u: a.run.remote(store, u, run_id), list(units))
    finally:
        for actor in actors:
            ray.kill(actor)


# ---------------------------------------------------------------------------------------------------------- driver
def finished_summary(store: TableStore, stage: PartStage, unit: Unit) -> dict | None:
    """The unit's summary when its data and ledger parts are both intact and current, else None."""
    data = store.part_summary(store.part_path(stage.asset, stage.partition, unit.index))
    ledger = store.part_summary(store.part_path("decisions/" + stage.asset, stage.partition, unit.index))
    for summary in (data, ledger):
        if not summary or summary.get("fingerprint") != unit.fingerprint or \
                summary.get("config_hash") != stage.config_hash:
            return None
    return data if data.get("run_id") == ledger.get("run_id") else None


@dataclass
class StageReport:
    """What `run_stage` did, and its read-back accounting."""

    stage: PartStage
    counts: StageCounts
    planned_inputs: int
    units: int
    reused: int
    computed_inputs: int
    seconds: float
    bytes_read: int
    accounting_passed: bool
    accounting: dict

    @property
    def images_per_second(self) -> float:
        """Computed inputs per second of this run."""
        return self.computed_inputs / self.seconds if self.seconds > 0 else 0.0

    def metadata(self, store: TableStore) -> dict[str, Any]:
        """The standard Dagster materialization metadata of a stage."""
        counts = self.counts.to_dict()
        reasons = "\n".join(f"| {k[len('dropped_'):]} | {v} |" for k, v in counts.items() if k.startswith("dropped_"))
        stage = self.stage
        return {
            **counts,
            "dagster/row_count": self.counts.kept,
            "parts": self.units,
            "parts_reused": self.reused,
            "computed_now": self.computed_inputs,
            "images_per_second": round(self.images_per_second, 2),
            "bytes_read_per_image": round(self.bytes_read / self.computed_inputs) if self.computed_inputs else 0,
            "seconds": round(self.seconds, 3),
            "drop_reasons": dg.MetadataValue.md(f"| reason | count |\n| --- | --- |\n{reasons}" if reasons
                                                else "none"),
            "path": dg.MetadataValue.path(store.uri(store.dir(stage.asset, stage.partition))),
            "decisions_path": dg.MetadataValue.path(store.uri(store.decisions_dir(stage.asset, stage.partition))),
        }

    def accounting_check(self, name: str = "accounting",
                         severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR) -> dg.AssetCheckResult:
        """The read-back accounting as an asset check result."""
        return dg.AssetCheckResult(check_name=name, passed=self.accounting_passed, metadata=self.accounting,
                                   severity=severity)


def _read_back(store: TableStore, stage: PartStage, units: Sequence[Unit]) -> tuple[bool, dict]:
    """Accounting from storage: planned inputs = kept rows + drops in the ledger, each drop with a reason."""
    rows = drops = without_reason = missing = flagged = planned = counted_by_reader = 0
    for unit in units:
        data_path = store.part_path(stage.asset, stage.partition, unit.index)
        ledger_path = store.part_path("decisions/" + stage.asset, stage.partition, unit.index)
        if not (store.exists(data_path) and store.exists(ledger_path)):
            missing += 1
            planned += unit.inputs or 0
            continue
        with store.fs.open_input_file(data_path) as f:
            rows += pq.ParquetFile(f).metadata.num_rows
        if unit.inputs is None:
            counted_by_reader += 1
            planned += int((store.part_summary(data_path) or {}).get("counts", {}).get("total", 0))
        else:
            planned += unit.inputs
        ledger = store.read_part(ledger_path, ["decision", "reason"])
        if ledger.num_rows:
            is_drop = pc.equal(ledger.column("decision"), "drop")
            drops += int(pc.sum(is_drop).as_py() or 0)
            reasons = ledger.filter(is_drop).column("reason").to_pylist()
            without_reason += sum(1 for r in reasons if not r)
    if stage.rows_are == "kept":
        passed = planned == rows + drops
    else:
        flagged = drops
        passed = planned == rows
    passed = passed and missing == 0 and without_reason == 0
    meta = {"planned_inputs": planned, "rows": rows, "dropped": drops, "drops_without_reason": without_reason,
            "missing_parts": missing, "units": len(units), "units_counted_by_their_reader": counted_by_reader}
    if stage.rows_are == "all":
        meta["flagged_in_rows"] = flagged
    return passed, meta


def run_stage(store: TableStore, stage: PartStage, units: Sequence[Unit], run_id: str,
              logger: logging.Logger | Any | None = None, progress_every_s: float = 5.0) -> StageReport:
    """Run a declared stage over its planned units: reuse, execute, write, verify, mark.

    Args:
        store: the storage root.
        stage: the stage declaration.
        units: every unit of the partition (or, for `append` stages, the new parts), indices unique.
        run_id: the orchestrator's run id, recorded in footers and ledger rows.
        logger: where progress goes at INFO (the asset's `context.log`).
        progress_every_s: least seconds between two progress log lines.
    """
    logger = logger or log
    indices = [u.index for u in units]
    if len(set(indices)) != len(indices):
        raise ValueError(f"{stage.asset}: duplicate unit indices")
    data_dir = store.dir(stage.asset, stage.partition)
    ledger_dir = store.decisions_dir(stage.asset, stage.partition)
    if not stage.append:
        for directory in (data_dir, ledger_dir):
            store.remove_parts_from(directory, len(units))  # an earlier, larger plan of this partition
    counts = StageCounts()
    todo: list[Unit] = []
    reused = 0
    for unit in units:
        done = finished_summary(store, stage, unit)
        if done is None:
            todo.append(unit)
        else:
            reused += 1
            counts.add(StageCounts.from_dict(done["counts"]))
    inputs_total = sum(u.inputs or 0 for u in todo)
    logger.info(f"{stage.asset}: {len(units)} unit(s), {reused} reused, {len(todo)} to compute "
                f"({inputs_total} input(s))")
    start = time.perf_counter()
    fresh = StageCounts()
    bytes_read = 0
    last = 0.0
    for done_units, summary in enumerate(_run_on_actors(stage, store, todo, run_id) if todo else [], start=1):
        unit_counts = StageCounts.from_dict(summary["counts"])
        fresh.add(unit_counts)
        bytes_read += int(summary.get("bytes_read") or 0)
        event = Progress(stage.asset, stage.partition, done_units, len(todo), fresh.total, inputs_total,
                         fresh.n_dropped, time.perf_counter() - start)
        _publish(event)
        now = time.perf_counter()
        if now - last >= progress_every_s or done_units == len(todo):
            logger.info(event.line())
            last = now
    seconds = time.perf_counter() - start
    counts.add(fresh)
    passed, accounting = _read_back(store, stage, units)
    if stage.write_marker and not stage.append:
        store.write_json(posixpath.join(data_dir, SUCCESS_MARKER), {
            "config_hash": stage.config_hash, "code_version": stage.code_version, "run_id": run_id,
            "parts": len(units), "counts": counts.to_dict(), "accounting_passed": passed,
            "input_ids": [u.fingerprint for u in units]})
    return StageReport(stage, counts, accounting["planned_inputs"], len(units), reused, fresh.total, seconds,
                       bytes_read, passed, accounting)
