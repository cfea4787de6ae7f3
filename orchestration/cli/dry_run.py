"""`curate run --dry-run`: per asset and partition, what a run would compute, reuse or retire, and why.

Nothing runs and nothing is written. The evidence is what a real run's reuse rests on: the last materialization in
the Dagster instance (its code version and the config of the run that made it), the completion marker a stage
writes next to its parts (`_SUCCESS.json`: parts, input fingerprints), and for `source_images` the unit plan itself
(re-planned from the drop, compared part by part with the stored footers exactly as the stage runner does).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from orchestration.cli.pipeline import plan_runs, prepare


@dataclass
class Verdict:
    """What a run would do to one asset partition."""

    asset: str
    partition: str | None
    action: str
    """'compute', 'reuse' or 'retire'."""
    why: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"{self.asset:<24} {self.partition or '-':<28} {self.action:<8} {'; '.join(self.why)}"


def _last_materialization(instance, key, partition: str | None):
    import dagster as dg

    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None), limit=1).records
    return records[0] if records else None


def _config_of_run(instance, run_id: str, asset: str) -> dict[str, Any] | None:
    run = instance.get_run_by_id(run_id)
    if run is None:
        return None
    return ((run.run_config or {}).get("ops", {}).get(asset) or {}).get("config") or {}


def _config_changes(before: dict[str, Any], now: dict[str, Any]) -> list[str]:
    return [f"{k} {before.get(k, 'default')!r} -> {now.get(k, 'default')!r}"
            for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]


def _source_units(store, partition: str, fields: dict[str, Any]) -> tuple[list[str], dict[str, int]]:
    """The unit-level plan of `source_images` for one drop: reasons, and counts of computed / reused / retired."""
    from assets.source_images import ASSET, SourceImagesConfig, config_hash
    from curation.sources import plan_units

    ingest = SourceImagesConfig(**fields).to_ingest_config()
    chash = config_hash(ingest)
    work = plan_units(store.source_uri(partition), ingest.read)
    counts = {"compute": 0, "reuse": 0, "retire": 0}
    reasons: dict[str, int] = {}
    for unit in work:
        data = store.part_summary(store.part_path(ASSET, partition, unit.index))
        ledger = store.part_summary(store.part_path("decisions/" + ASSET, partition, unit.index))
        if data is None and ledger is None and not store.exists(store.part_path(ASSET, partition, unit.index)):
            why = "not computed yet"
        elif data is None or ledger is None:
            why = "a damaged or missing data/ledger part"
        elif data.get("config_hash") != chash:
            why = "config or code version changed"
        elif data.get("fingerprint") != unit.fingerprint:
            why = "its files changed"
        elif data.get("run_id") != ledger.get("run_id"):
            why = "data and ledger parts from different runs"
        else:
            counts["reuse"] += 1
            continue
        counts["compute"] += 1
        reasons[why] = reasons.get(why, 0) + 1
    existing = [p for p in store.list_parts(store.dir(ASSET, partition))
                if int(posixpath.basename(p)[5:10]) >= len(work)]
    counts["retire"] = len(existing)
    lines = [f"{n} part(s): {why}" for why, n in sorted(reasons.items())]
    return lines, counts


def judge(instance, store, graph, key, partition: str | None, config: dict[str, Any],
          changing: set) -> Verdict:
    """The verdict for one asset partition; `changing` holds the asset keys that earlier verdicts will compute."""
    name = key.to_user_string()
    node = graph.get(key)
    fields = (config.get("assets") or {}).get(name) or {}
    verdict = Verdict(name, partition, "reuse")
    upstream = sorted(p.to_user_string() for p in node.parent_keys if p in changing)
    record = _last_materialization(instance, key, partition)
    if name == "source_images" and partition:
        try:
            lines, counts = _source_units(store, partition, fields)
        except (FileNotFoundError, KeyError) as exc:
            return Verdict(name, partition, "compute", [f"the drop cannot be planned: {exc}"])
        if counts["compute"]:
            verdict.action = "compute"
        verdict.why += lines + [f"{counts['reuse']} part(s) reused"]
        if counts["retire"]:
            verdict.why.append(f"{counts['retire']} part(s) past the plan retired")
            if verdict.action == "reuse":
                verdict.action = "retire"
        return verdict
    if record is None:
        return Verdict(name, partition, "compute", ["never materialized"])
    materialization = record.event_log_entry.asset_materialization
    stored_version = (materialization.tags or {}).get("dagster/code_version")
    if node.code_version and stored_version and stored_version != node.code_version:
        verdict.action = "compute"
        verdict.why.append(f"code version {stored_version} -> {node.code_version}")
    before = _config_of_run(instance, record.run_id, name)
    if before is not None and before != fields:
        verdict.action = "compute"
        verdict.why.append("config changed: " + ", ".join(_config_changes(before, fields)))
    if upstream:
        verdict.action = "compute"
        verdict.why.append(f"upstream {', '.join(upstream)} changes")
    marker = store.read_json(posixpath.join(store.dir(name, partition), "_SUCCESS.json"))
    if marker is not None and marker.get("accounting_passed") is False:
        verdict.action = "compute"
        verdict.why.append("its last run failed the accounting check")
    if verdict.action == "reuse":
        parts = f", {marker['parts']} part(s)" if marker and "parts" in marker else ""
        verdict.why.append(f"unchanged since run {record.run_id[:8]}{parts}; the stage's own fingerprints decide "
                           "per part when it runs")
    return verdict


def dry_run(sources: list[str], storage: str, config: dict[str, Any], select: str | None, out=None) -> int:
    """Print the verdict of every asset partition the run would touch, in run order; exit code 0."""
    import sys

    from orchestration.storage import TableStore

    out = out or sys.stdout
    instance, graph, selected, keys = prepare(sources, storage, select, register=False)
    store = _DryStore(TableStore(storage), sources)
    runs = plan_runs(graph, selected, keys)
    print(f"dry run: {len(runs)} Dagster run(s) over {len(keys)} drop(s); nothing is run or written", file=out)
    print(f"{'asset':<24} {'partition':<28} {'action':<8} why", file=out)
    changing: set = set()
    totals = {"compute": 0, "reuse": 0, "retire": 0}
    for partition, asset_keys in runs:
        for key in asset_keys:
            verdict = judge(instance, store, graph, key, partition, config, changing)
            if verdict.action == "compute":
                changing.add(key)
            totals[verdict.action] += 1
            print(verdict.line(), file=out)
    print(f"{totals['compute']} to compute, {totals['reuse']} to reuse, {totals['retire']} with parts to retire",
          file=out)
    return 0


class _DryStore:
    """The table store, with the drops of this command resolvable before they are registered (a dry run writes
    nothing, so a new `--source` is not in the registry yet)."""

    def __init__(self, store, sources: list[str]) -> None:
        from curation.sources import canonical_uri, drop_key

        self._store = store
        self._new = {drop_key(s): canonical_uri(s) for s in sources}

    def source_uri(self, partition: str) -> str:
        return self._new.get(partition) or self._store.source_uri(partition)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
