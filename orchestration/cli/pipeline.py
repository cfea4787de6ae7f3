"""`curate run`'s engine: register the drops, plan Dagster runs by partitioning, materialize, summarise."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from orchestration.cli.config import UsageError


def dagster_home_for(storage: str) -> str | None:
    """DAGSTER_HOME if set; else `<storage>/.dagster` for local storage, so `curate ui` shows `curate run`'s runs."""
    if os.environ.get("DAGSTER_HOME"):
        return os.environ["DAGSTER_HOME"]
    if "://" in storage:
        return None
    home = Path(storage).resolve() / ".dagster"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return str(home)


def _instance(storage: str):
    import dagster as dg

    home = dagster_home_for(storage)
    if home is None:
        return dg.DagsterInstance.ephemeral()
    os.environ["DAGSTER_HOME"] = home
    return dg.DagsterInstance.get()


class PipelineFailed(RuntimeError):
    """Some runs failed (the others ran); carries every summary, failures included."""

    def __init__(self, summaries: list[dict[str, Any]]) -> None:
        self.summaries = summaries
        failed = failures(summaries)
        super().__init__("; ".join(f["message"] for f in failed[:3]) + (f" (+{len(failed) - 3} more)"
                                                                        if len(failed) > 3 else ""))


def failures(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The summaries of runs that failed or were skipped because an upstream run failed."""
    return [s for s in summaries if s.get("failed")]


def prepare(sources: list[str], storage: str, select: str | None, register: bool = True):
    """Register the drops and resolve the selection: (instance, graph, selected keys, drop keys).

    Args:
        register: False for a dry run: nothing is written (neither the source registry nor Dagster partitions).

    Raises:
        UsageError: a drop that does not exist, no drops at all, or a selection that matches no asset.
    """
    import dagster as dg

    from assets.source_images import source_drops
    from curation.sources import canonical_uri, drop_key
    from orchestration.definitions import defs
    from orchestration.storage import TableStore

    for source in sources:
        if "://" not in source and not Path(source).exists():
            raise UsageError(f"source drop not found: {source}")
    store = TableStore(storage)
    fresh = "://" not in storage and not os.environ.get("DAGSTER_HOME") and not (Path(storage) / ".dagster").is_dir()
    instance = dg.DagsterInstance.ephemeral() if fresh and not register else _instance(storage)
    if register:
        for source in sources:
            store.register_source(drop_key(source), canonical_uri(source))
    keys = [drop_key(s) for s in sources] if sources else list(store.registered_sources())
    if not keys:
        raise UsageError(f"no source drops: pass --source PATH (none are registered under {storage})")
    for key in keys if register else ():
        if not instance.has_dynamic_partition(source_drops.name, key):
            instance.add_dynamic_partitions(source_drops.name, [key])
    graph = defs.resolve_asset_graph()
    try:
        selected = (dg.AssetSelection.from_string(select) if select else dg.AssetSelection.all()).resolve(graph)
    except Exception as exc:  # Dagster raises several types for bad selections; all mean the same to a user
        raise UsageError(f"--select {select!r} matches no asset: {' '.join(str(exc).split())[:200]}") from None
    if not selected:
        raise UsageError(f"--select {select!r} matches no asset")
    return instance, graph, selected, keys


def run_pipeline(sources: list[str], storage: str, config: dict[str, Any] | None = None,
                 select: str | None = None, terminal: Any = None) -> list[dict[str, Any]]:
    """Register the drops, then materialize the selection through Dagster: one run per drop, then the global assets.

    A failed run does not stop the others: every other drop still runs; a later run whose assets depend on a failed
    asset is skipped (its inputs are incomplete), and both appear among the summaries.

    Args:
        terminal: where the plan, each run's line and the stages' progress go (`console.Terminal`); None: nowhere.

    Returns:
        One summary per materialized asset partition (asset, partition, metadata), per check result, and per
        failed or skipped run.

    Raises:
        UsageError: see `prepare`.
        PipelineFailed: after every runnable run ran, when one failed.
    """
    import dagster as dg

    from assets import ALL_ASSETS
    from orchestration.definitions import build_resources
    from orchestration.ray_adapter import init_ray
    from orchestration.stage_runner import add_progress_listener

    config = config or {}
    instance, graph, selected, keys = prepare(sources, storage, select)
    ray_cfg = config.get("ray") or {}
    resources = build_resources(storage_root=storage, ray_num_cpus=ray_cfg.get("num_cpus"))

    def run_config_for(asset_keys) -> dict[str, Any]:
        ops = {name: {"config": cfg} for name, cfg in (config.get("assets") or {}).items()
               if dg.AssetKey(name) in asset_keys}
        return {"ops": ops,
                "loggers": {"console": {"config": {"log_level": os.environ.get("ATELIER_LOG_LEVEL", "INFO")}}}}

    runs = plan_runs(graph, selected, keys)
    if terminal is not None:
        for line in describe_plan(runs, len(keys)):
            terminal.print(line)
    init_ray(ray_cfg.get("num_cpus"))  # one Ray for every run this command makes
    remove = add_progress_listener(_progress_to(terminal)) if terminal is not None else (lambda: None)
    summaries: list[dict[str, Any]] = []
    failed_keys: set = set()
    try:
        for number, (partition, asset_keys) in enumerate(runs, start=1):
            where = partition or "(global)"
            names = ", ".join(k.to_user_string() for k in asset_keys)
            blocked = sorted({p.to_user_string() for k in asset_keys for p in graph.upstream_asset_keys_for(k)
                              if p in failed_keys and p not in asset_keys}) if failed_keys else []
            if blocked:
                message = f"{names} [{where}] skipped: upstream {', '.join(blocked)} failed"
                summaries.append({"failed": True, "skipped": True, "partition": partition, "message": message,
                                  "assets": [k.to_user_string() for k in asset_keys]})
                if terminal is not None:
                    terminal.print(f"[{number}/{len(runs)}] {message}")
                continue
            if terminal is not None:
                terminal.status("run", f"[{number}/{len(runs)}] running {where}: {names}")
            start = time.monotonic()
            result = dg.materialize(ALL_ASSETS, selection=asset_keys, partition_key=partition, instance=instance,
                                    resources=resources, run_config=run_config_for(asset_keys),
                                    raise_on_error=False, tags={"atelier/cli": "curate run"})
            seconds = time.monotonic() - start
            if terminal is not None:
                terminal.clear("run")
            if not result.success:
                failed_keys.update(asset_keys)
                message = f"run {result.run_id} failed for {where}: {failure_message(result)}"
                summaries.append({"failed": True, "partition": partition, "run_id": result.run_id,
                                  "message": message, "assets": [k.to_user_string() for k in asset_keys]})
                if terminal is not None:
                    terminal.print(f"[{number}/{len(runs)}] FAILED {where}: {names}: {failure_message(result)}")
            elif terminal is not None:
                terminal.print(f"[{number}/{len(runs)}] {where}: {names} ({seconds:.0f} s)")
            for event in result.get_asset_materialization_events():
                mat = event.event_specific_data.materialization
                summaries.append({
                    "asset": mat.asset_key.to_user_string(),
                    "partition": mat.partition,
                    "run_id": result.run_id,
                    "metadata": {k: _plain(v) for k, v in mat.metadata.items()},
                })
            for evaluation in result.get_asset_check_evaluations():
                summaries.append({"check": evaluation.check_name, "asset": evaluation.asset_key.to_user_string(),
                                  "partition": partition, "passed": evaluation.passed,
                                  "severity": getattr(evaluation.severity, "value", "ERROR")})
    finally:
        remove()
    if failures(summaries):
        raise PipelineFailed(summaries)
    return summaries


def failure_message(result) -> str:
    """One line: the first failed step and the first line of its error."""
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            error = getattr(event.event_specific_data, "error", None)
            while error is not None and error.cause is not None:  # Dagster's wrappers first, the user's error last
                error = error.cause
            text = (error.message if error is not None else event.message or "").strip().splitlines()
            return f"{event.step_key}: {text[0] if text else 'failed'}"[:400]
    failure = next((e for e in result.all_events if e.is_failure), None)
    return " ".join((failure.message if failure else "unknown failure").split())[:400]


def _progress_to(terminal) -> Any:
    def show(event) -> None:
        key = f"{event.asset}[{event.partition}]" if event.partition else event.asset
        terminal.status(key, "  " + event.line(), done=event.units_done >= event.units_total,
                        elapsed=event.elapsed_s)
    return show


def describe_plan(runs: list[tuple[str | None, list]], n_drops: int) -> list[str]:
    """The plan in a few lines: consecutive runs of the same assets folded into one line."""
    groups: list[tuple[list, list]] = []
    for partition, keys in runs:
        if groups and groups[-1][0] == keys:
            groups[-1][1].append(partition)
        else:
            groups.append((keys, [partition]))
    lines = [f"plan: {len(runs)} Dagster run(s) over {n_drops} drop(s)"]
    for keys, partitions in groups:
        where = "(global)" if partitions == [None] else \
            f"x{len(partitions)} ({', '.join(str(p) for p in partitions[:4])}{', ...' if len(partitions) > 4 else ''})"
        lines.append(f"  {where:<32} {', '.join(k.to_user_string() for k in keys)}")
    return lines


def plan_runs(graph, selected, drop_keys: list[str]) -> list[tuple[str | None, list]]:
    """Dagster runs in dependency order: (partition key or None, asset keys).

    A run materializes assets of one partitions definition; an asset moves to a later phase than a parent with another
    partitioning (the probe before the drops, dedup after every drop, the shards after the captions). Drop-partitioned
    phases run once per drop, curriculum-stage phases once per stage in curriculum order.
    """
    import dagster as dg

    phase: dict = {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        # an unpartitioned root (the probe) runs before everything, so its children need no phase of their own
        root = -1 if node.partitions_def is None else 0
        phase[key] = max((phase[p] + (graph.get(p).partitions_def != node.partitions_def) for p in node.parent_keys),
                         default=root)
    groups: dict[tuple, list] = {}
    for key in graph.toposorted_asset_keys:
        if key in selected:
            pdef = graph.get(key).partitions_def
            groups.setdefault((phase[key], repr(pdef) if pdef else ""), []).append(key)
    runs: list[tuple[str | None, list]] = []
    for (_, _), keys in sorted(groups.items(), key=lambda item: item[0]):
        pdef = graph.get(keys[0]).partitions_def
        if pdef is None:
            runs.append((None, keys))
        elif isinstance(pdef, dg.DynamicPartitionsDefinition):
            runs += [(k, keys) for k in drop_keys]
        else:
            runs += [(k, keys) for k in pdef.get_partition_keys()]
    return runs


def _plain(value: Any) -> Any:
    return getattr(value, "value", getattr(value, "path", getattr(value, "text", value)))


def checks_passed(summaries: list[dict[str, Any]]) -> bool:
    """Every run succeeded and no check of ERROR severity failed (a failed WARN check, such as a plateauing loss, is
    reported, not fatal)."""
    return not failures(summaries) and all(s.get("passed", True) or s.get("severity") == "WARN" for s in summaries)


def summary_lines(summaries: list[dict[str, Any]]) -> list[str]:
    """A table of what each asset partition kept and dropped and whether its checks passed; then one line per failed
    check and per failed or skipped run."""
    checks = {(s["asset"], s["partition"], s["check"]): s["passed"] for s in summaries
              if "check" in s and s.get("severity") != "WARN"}
    warns = {(s["asset"], s["partition"], s["check"]): s["passed"] for s in summaries
             if "check" in s and s.get("severity") == "WARN"}
    lines = [f"{'asset':<22} {'partition':<28} {'in':>6} {'kept':>6} {'dropped':>8}  checks  drop reasons"]
    for s in summaries:
        if "check" in s or s.get("failed"):
            continue
        meta = s["metadata"]
        mine = [ok for (a, p, _), ok in checks.items() if a == s["asset"] and p == s["partition"]]
        warned = [ok for (a, p, _), ok in warns.items() if a == s["asset"] and p == s["partition"]]
        status = "ok" if mine and all(mine) else ("FAIL" if mine else "-")
        if status != "FAIL" and not all(warned):
            status = "warn"
        reasons = ", ".join(f"{k[len('dropped_'):]}={v}" for k, v in meta.items() if k.startswith("dropped_"))
        if "curated_total" in meta:  # incremental assets: what this run added and what the whole set holds now
            reasons = f"[{meta['curated_total']} curated in all] {reasons}".strip()
        if "held_out_auc" in meta:
            reasons = f"probe {meta.get('version')}: {meta['n_ai']} AI / {meta['n_real']} real, held-out AUC " \
                      f"{meta['held_out_auc']:.2f}"
        if "final_loss" in meta:
            reasons = f"DiT {meta['model_size']} ({meta['params']:,} params), {meta['steps']} steps, loss " \
                      f"{meta['first_loss']:.3f} -> {meta['final_loss']:.3f}, {meta['samples_per_second']} samples/s"
        partition = str(s["partition"] or "-")
        lines.append(f"{s['asset']:<22} {partition:<28} {meta.get('total', ''):>6} {meta.get('kept', ''):>6} "
                     f"{meta.get('dropped', ''):>8}  {status:<6}  {reasons}")
    for s in summaries:
        if "check" in s and not s["passed"]:
            where = f"[{s['partition']}]" if s["partition"] else ""
            lines.append(f"check {s['check']} of {s['asset']}{where} failed ({s['severity']})")
    lines += [("SKIPPED: " if s.get("skipped") else "FAILED: ") + s["message"] for s in failures(summaries)]
    return lines


def print_summary(summaries: list[dict[str, Any]], out=None) -> None:
    """`summary_lines` printed to `out` (default stdout)."""
    out = out or sys.stdout
    for line in summary_lines(summaries):
        print(line, file=out)
