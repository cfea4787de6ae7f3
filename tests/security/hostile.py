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
    """Run `code` in a fresh interpreter from the repo root, killed after `timeout` s.

    `__CAP__()` in the code marks the end of its imports: with `max_memory_mb`, the address space is then capped at
    that much above its size (a runaway read fails with MemoryError instead of filling the machine); the cap is on
    virtual memory, which thread stacks and allocator arenas also take, so it must be generous. `__GROWTH_MB__()`
    gives the peak resident growth since `__CAP__()`, the tight measure a test asserts on.
    """
    cap = "" if max_memory_mb is None else (
        "    with open('/proc/self/statm') as f:\n"
        "        pages = int(f.read().split()[0])\n"
        f"    limit = pages * resource.getpagesize() + {max_memory_mb} * 2**20\n"
        "    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))\n")
    prologue = ("import resource\n_BASE = [0]\n"
                "def __CAP__():\n    _BASE[0] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n" + cap +
                "def __GROWTH_MB__():\n"
                "    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - _BASE[0]) / 1024\n")
    # Leave without interpreter teardown: a native library's thread torn down at exit can abort (SIGABRT) after
    # the result was printed, which is not what these tests look at.
    epilogue = "\nimport os as _os, sys as _sys\n_sys.stdout.flush()\n_os._exit(0)\n"
    return subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(code) + epilogue], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
