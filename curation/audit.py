"""Dataset card and audit report: what the training data holds, where it came from, and what was removed and why.

Pure functions over Arrow tables the assets read from storage; the markdown is what a reviewer reads, the JSON what a
later audit diffs against.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pyarrow as pa


def drops_by_stage(ledger: pa.Table) -> dict[str, dict[str, int]]:
    """{stage: {reason: count}} over the ledger's drops."""
    out: dict[str, Counter] = {}
    if ledger.num_rows:
        for stage, decision, reason in zip(ledger.column("stage").to_pylist(), ledger.column("decision").to_pylist(),
                                           ledger.column("reason").to_pylist(), strict=True):
            if decision == "drop":
                out.setdefault(stage, Counter())[reason] += 1
    return {s: dict(sorted(c.items())) for s, c in sorted(out.items())}


def licence_breakdown(licences: list[str | None]) -> dict[str, int]:
    counts = Counter(lic or "unknown" for lic in licences)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def summarise(sources: dict[str, dict[str, Any]], ledger: pa.Table, shards: dict[str, pa.Table],
              curated: int, opt_out_requests: int, config_hashes: dict[str, Any],
              code_versions: dict[str, str]) -> dict[str, Any]:
    """The card's content.

    Args:
        sources: per source drop: {"uri", "inputs", "kept"}.
        ledger: the whole decisions ledger (columns sample_id, stage, decision, reason).
        shards: per curriculum stage, the shard rows (sample_id, bucket, license, source_uri).
        curated: samples kept after rebalancing.
        opt_out_requests: entries in the opt-out list.
        config_hashes: per asset, the configuration fingerprint of its latest materialization.
        code_versions: per asset, its code version.
    """
    stages = {}
    for stage, table in sorted(shards.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]):
        buckets = Counter(table.column("bucket").to_pylist()) if table.num_rows else Counter()
        stages[stage] = {"rows": table.num_rows,
                         "buckets": dict(sorted(buckets.items(), key=lambda kv: (-kv[1], kv[0]))),
                         "licences": licence_breakdown(table.column("license").to_pylist() if table.num_rows else [])}
    opted = 0
    if ledger.num_rows:
        opted = len({s for s, st, d in zip(ledger.column("sample_id").to_pylist(), ledger.column("stage").to_pylist(),
                                           ledger.column("decision").to_pylist(), strict=True)
                     if st == "opt_out" and d == "drop"})
    return {
        "sources": sources,
        "inputs": sum(s["inputs"] for s in sources.values()),
        "curated": curated,
        "stages": stages,
        "drops": drops_by_stage(ledger),
        "opt_outs": {"requests": opt_out_requests, "samples_removed": opted},
        "config_hashes": config_hashes,
        "code_versions": code_versions,
    }


def diff(previous: dict[str, Any] | None, current: dict[str, Any],
         previous_ids: dict[str, set[str]], current_ids: dict[str, set[str]]) -> dict[str, Any]:
    """What changed since the previous audit: counts, and samples added to or removed from each stage's shards."""
    if previous is None:
        return {"first_audit": True}
    out: dict[str, Any] = {"first_audit": False, "previous_run": previous.get("run_id")}
    out["inputs"] = current["inputs"] - previous.get("inputs", 0)
    out["curated"] = current["curated"] - previous.get("curated", 0)
    stages = {}
    for stage in sorted(set(current_ids) | set(previous_ids)):
        before, after = previous_ids.get(stage, set()), current_ids.get(stage, set())
        stages[stage] = {"added": len(after - before), "removed": len(before - after)}
    out["shards"] = stages
    drops = {}
    for stage in sorted(set(current["drops"]) | set(previous.get("drops", {}))):
        now, then = current["drops"].get(stage, {}), previous.get("drops", {}).get(stage, {})
        changes = {r: now.get(r, 0) - then.get(r, 0) for r in sorted(set(now) | set(then))
                   if now.get(r, 0) != then.get(r, 0)}
        if changes:
            drops[stage] = changes
    out["drops"] = drops
    out["config_changed"] = sorted(k for k, v in current["config_hashes"].items()
                                   if previous.get("config_hashes", {}).get(k) != v)
    return out


def _table(rows: list[tuple], header: tuple[str, ...]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_markdown(report: dict[str, Any], title: str) -> str:
    """A reviewer's view of a card or audit report."""
    parts = [f"# {title}", ""]
    if report.get("run_id"):
        parts += [f"Run `{report['run_id']}` at {report.get('created_at', '?')}.", ""]
    parts += [f"{report['inputs']} inputs from {len(report['sources'])} source drop(s); {report['curated']} curated "
              f"after filters, deduplication and rebalancing.", "", "## Sources", "",
              _table([(k, v["uri"], v["inputs"], v["kept"]) for k, v in report["sources"].items()],
                     ("drop", "uri", "inputs", "ingested"))]
    parts += ["", "## Training shards per curriculum stage", "",
              _table([(s, v["rows"], ", ".join(f"{b}: {n}" for b, n in list(v["buckets"].items())[:8]))
                      for s, v in report["stages"].items()], ("stage", "rows", "largest buckets")),
              "", "## Licences in the shards", ""]
    licences = Counter()
    for v in report["stages"].values():
        licences.update(v["licences"])
    parts.append(_table(sorted(licences.items(), key=lambda kv: -kv[1]), ("licence", "rows (all stages)")))
    parts += ["", "## Removed, per stage and reason", "",
              _table([(s, r, n) for s, reasons in report["drops"].items() for r, n in reasons.items()],
                     ("stage", "reason", "samples")),
              "", "## Opt-outs", "",
              f"{report['opt_outs']['requests']} request(s) on the list; {report['opt_outs']['samples_removed']} "
              "sample(s) removed at a creator's request; none of them is in any shard (asset check).", ""]
    if "changes" in report:
        ch = report["changes"]
        parts += ["## Since the previous audit", ""]
        if ch.get("first_audit"):
            parts.append("First audit of this storage.")
        else:
            parts.append(f"Previous run `{ch['previous_run']}`: inputs {ch['inputs']:+d}, curated {ch['curated']:+d}.")
            parts.append("")
            parts.append(_table([(s, f"+{v['added']}", f"-{v['removed']}") for s, v in ch["shards"].items()],
                                ("stage", "added to shards", "removed from shards")))
            if ch["drops"]:
                parts += ["", _table([(s, r, f"{n:+d}") for s, rs in ch["drops"].items() for r, n in rs.items()],
                                     ("stage", "reason", "change"))]
            if ch["config_changed"]:
                parts += ["", f"Configuration changed for: {', '.join(ch['config_changed'])}."]
        parts.append("")
    parts += ["## Configuration and code", "",
              _table([(k, report["code_versions"].get(k, "-"), report["config_hashes"].get(k, "-"))
                      for k in sorted(set(report["code_versions"]) | set(report["config_hashes"]))],
                     ("asset", "code version", "config hash")), ""]
    return "\n".join(parts)
