"""Helpers for hostile-input tests: ingest a drop at the pure level and check every input is accounted for."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from curation.ingest import IngestConfig, ingest_unit
from curation.sources import ReadLimits, plan_units

REPO = Path(__file__).resolve().parents[2]


def ingest_drop(source, limits: ReadLimits | None = None, previous=()):
    """Plan and ingest a whole drop; returns (kept rows, decisions), after checking the accounting of every unit."""
    config = IngestConfig(read=limits or ReadLimits())
    rows, decisions = [], []
    for unit in plan_units(str(source), config.read, previous):
        result = ingest_unit(unit, "drop", config)
        assert result.counts.balanced(), result.counts
        if unit.kind == "files":
            assert result.counts.total == len(unit.files)  # every planned input came out
        drops = [d for d in result.decisions if d.decision == "drop"]
        assert len(drops) == result.counts.n_dropped and all(d.reason for d in drops)
        rows += result.rows.to_pylist()
        decisions += result.decisions
    return rows, decisions


def drops_by_name(decisions) -> dict[str, str]:
    """Last path component (after any `#`) -> reason of each drop."""
    return {d.source_uri.rsplit("/", 1)[-1].split("#")[-1]: d.reason for d in decisions if d.decision == "drop"}


def stored_bytes(rows, decisions) -> bytes:
    """Everything ingest would write, as one blob, to assert that nothing of a refused file reached storage."""
    from curation.decisions import decisions_table

    blob = b"".join(r["image"] for r in rows)
    blob += "".join(r["metadata"] + r["source_uri"] for r in rows).encode()
    blob += str(decisions_table(decisions, "run", "v").to_pylist()).encode()
    return blob


def run_isolated(code: str, timeout: float = 60, max_memory_mb: int | None = None) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter from the repo root, killed after `timeout` s; with `max_memory_mb`, its
    address space is capped at that much above what it uses once its imports are done (`__CAP__()` marks where)."""
    prologue = "import resource\n"
    if max_memory_mb is not None:
        prologue += textwrap.dedent(f"""
            def __CAP__():
                with open('/proc/self/statm') as f:
                    pages = int(f.read().split()[0])
                limit = pages * resource.getpagesize() + {max_memory_mb} * 2**20
                resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            """)
    else:
        prologue += "def __CAP__():\n    pass\n"
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
