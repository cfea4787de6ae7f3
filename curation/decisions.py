"""The `decisions` ledger: one row per decision that removes or changes a sample, written the same way by every stage.

A stage collects `Decision`s while it works and turns them into an Arrow table with `decisions_table`; `StageCounts`
keeps the `total / kept / dropped_<reason>` tally that becomes Dagster metadata and feeds the accounting check.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

STAGES = ("ingest", "opt_out", "ai_image", "nsfw", "artifact", "dedup", "rebalance", "ocr", "caption", "variants",
          "shard", "style")
DECISION_KINDS = ("drop", "keep", "downweight")

DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string()),
        pa.field("source_uri", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("decision", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("threshold", pa.float64()),
        pa.field("duplicate_of", pa.string()),
        pa.field("details", pa.string()),
        pa.field("run_id", pa.string()),
        pa.field("code_version", pa.string()),
    ]
)


@dataclass(frozen=True)
class Decision:
    """One ledger entry; `sample_id` is None only when the input's bytes could not be read at all."""

    sample_id: str | None
    source_uri: str
    stage: str
    decision: str
    reason: str
    score: float | None = None
    threshold: float | None = None
    duplicate_of: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"unknown stage {self.stage!r}; expected one of {STAGES}")
        if self.decision not in DECISION_KINDS:
            raise ValueError(f"unknown decision {self.decision!r}; expected one of {DECISION_KINDS}")
        if not self.reason:
            raise ValueError("every decision needs a reason")


def decisions_table(decisions: list[Decision], run_id: str | None, code_version: str | None) -> pa.Table:
    """Build a ledger table (schema `DECISIONS_SCHEMA`) from decisions.

    Args:
        decisions: the stage's decisions, in any order.
        run_id: the orchestrator's run id (Dagster run id), recorded on every row.
        code_version: the stage's code version, recorded on every row.

    Returns:
        An Arrow table; empty (with the schema) when there are no decisions.
    """
    columns: dict[str, list[Any]] = {name: [] for name in DECISIONS_SCHEMA.names}
    for d in decisions:
        columns["sample_id"].append(d.sample_id)
        columns["source_uri"].append(d.source_uri)
        columns["stage"].append(d.stage)
        columns["decision"].append(d.decision)
        columns["reason"].append(d.reason)
        columns["score"].append(d.score)
        columns["threshold"].append(d.threshold)
        columns["duplicate_of"].append(d.duplicate_of)
        columns["details"].append(json.dumps(d.details, sort_keys=True, default=str) if d.details else None)
        columns["run_id"].append(run_id)
        columns["code_version"].append(code_version)
    return pa.table(columns, schema=DECISIONS_SCHEMA)


@dataclass
class StageCounts:
    """Counts for the accounting invariant: every input is either kept or dropped with a reason."""

    total: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    notes: Counter = field(default_factory=Counter)

    def add(self, other: StageCounts) -> None:
        """Accumulate another unit's counts into this one."""
        self.total += other.total
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.notes.update(other.notes)

    @property
    def n_dropped(self) -> int:
        """All drops, whatever the reason."""
        return sum(self.dropped.values())

    def balanced(self) -> bool:
        """True when in = kept + dropped."""
        return self.total == self.kept + self.n_dropped

    def to_dict(self) -> dict[str, Any]:
        """Flat `total / kept / dropped / dropped_<reason> / note_<note>` dict (Dagster metadata friendly)."""
        out: dict[str, Any] = {"total": self.total, "kept": self.kept, "dropped": self.n_dropped}
        out.update({f"dropped_{reason}": n for reason, n in sorted(self.dropped.items())})
        out.update({f"note_{note}": n for note, n in sorted(self.notes.items())})
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StageCounts:
        """Inverse of `to_dict`."""
        counts = cls(total=int(data["total"]), kept=int(data["kept"]))
        for key, value in data.items():
            if key.startswith("dropped_"):
                counts.dropped[key[len("dropped_") :]] = int(value)
            elif key.startswith("note_"):
                counts.notes[key[len("note_") :]] = int(value)
        return counts
