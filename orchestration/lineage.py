"""Lineage of one sample: where it came from and every decision any stage made about it."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pyarrow.dataset as pads

from curation.schema import SOURCE_IMAGES_SCHEMA
from curation.sources import canonical_uri
from orchestration.storage import TableStore

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def resolve_query(query: str) -> tuple[str | None, str | None]:
    """(sample_id, source_uri) to look for: a sample id as is, or a path (hashed and canonicalised)."""
    if _SHA256.match(query.lower()):
        return query.lower(), None
    path = Path(query)
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest(), canonical_uri(query)
    return None, query if "#" in query or "://" in query else canonical_uri(query)


def find_lineage(storage: str, query: str) -> dict[str, Any]:
    """Everything the storage knows about a sample id or a source path.

    Args:
        storage: the storage root.
        query: a sample id (hex sha256), a local file path, or a source URI (`container#member` included).

    Returns:
        `{"query", "sample_ids", "records", "decisions"}`; records are `source_images` rows without image bytes.
    """
    store = TableStore(storage)
    sample_id, uri = resolve_query(query)
    conditions = []
    if sample_id:
        conditions.append(pads.field("sample_id") == sample_id)
    if uri:
        conditions.append(pads.field("source_uri") == uri)
    condition = conditions[0] if len(conditions) == 1 else conditions[0] | conditions[1]
    columns = [n for n in SOURCE_IMAGES_SCHEMA.names if n != "image"]
    records = store.read_table(store.asset_dir("source_images"), columns=columns, filter=condition,
                               schema=SOURCE_IMAGES_SCHEMA).to_pylist()
    ids = sorted({r["sample_id"] for r in records} | ({sample_id} if sample_id else set()))
    ledger_condition = condition
    if ids:
        ledger_condition = condition | pads.field("sample_id").isin(ids)
    decisions = store.read_decisions(filter=ledger_condition).to_pylist()
    # follow duplicate_of to the representative, and list what was removed as a duplicate of this sample
    representative = next((d["duplicate_of"] for d in decisions if d["duplicate_of"]), None)
    duplicates = []
    if ids:
        duplicates = store.read_decisions(filter=pads.field("duplicate_of").isin(ids)).to_pylist()
        duplicates = [d for d in duplicates if d["sample_id"] not in ids or d["source_uri"] != (uri or "")]
    rep_records = []
    if representative and representative not in ids:
        rep_records = store.read_table(store.asset_dir("source_images"), columns=["sample_id", "source", "source_uri"],
                                       filter=pads.field("sample_id") == representative,
                                       schema=SOURCE_IMAGES_SCHEMA).to_pylist()
    for row in records:
        row["metadata"] = json.loads(row["metadata"])
    for d in decisions:
        d["details"] = json.loads(d["details"]) if d["details"] else None
    for d in duplicates:
        d["details"] = json.loads(d["details"]) if d["details"] else None
    return {"query": query, "sample_ids": ids, "records": records, "decisions": decisions,
            "representative": {"sample_id": representative, "records": rep_records} if representative else None,
            "duplicates": duplicates}


def format_lineage(report: dict[str, Any]) -> str:
    """Human-readable lineage."""
    lines = [f"lineage of {report['query']}"]
    for sid in report["sample_ids"]:
        lines.append(f"  sample_id {sid}")
    for r in report["records"]:
        lines.append(f"  source    {r['source']}  {r['source_uri']}")
        lines.append(f"    ingest  {r['format']} {r['width']}x{r['height']} {r['mode']}"
                     f"{' animated x' + str(r['n_frames']) if r['is_animated'] else ''}, {r['byte_size']} bytes,"
                     f" licence {r['licence'] or 'unknown'}")
        if r["notes"]:
            lines.append(f"    notes   {', '.join(r['notes'])}")
        sidecar = r["metadata"].get("sidecar") or {}
        if sidecar:
            lines.append(f"    sidecar {json.dumps(sidecar, ensure_ascii=False)[:300]}")
        embedded = r["metadata"].get("embedded") or {}
        if embedded:
            lines.append(f"    embedded metadata: {', '.join(sorted(embedded))}")
    if not report["records"]:
        lines.append("  not in source_images (refused at ingest or never ingested)")
    lines.append("  decisions:")
    for d in report["decisions"] or []:
        score = f" score={d['score']:.4g}" if d["score"] is not None else ""
        threshold = f" threshold={d['threshold']:.4g}" if d["threshold"] is not None else ""
        dup = f" duplicate_of={d['duplicate_of']}" if d["duplicate_of"] else ""
        lines.append(f"    [{d['stage']}] {d['decision']} {d['reason']}{score}{threshold}{dup}  ({d['source_uri']})")
        if d["details"]:
            lines.append(f"        {json.dumps(d['details'], ensure_ascii=False)[:300]}")
        lines.append(f"        run {d['run_id']}  code {d['code_version']}")
    if not report["decisions"]:
        lines.append("    none")
    rep = report.get("representative")
    if rep:
        lines.append(f"  representative: {rep['sample_id']}")
        for r in rep["records"]:
            lines.append(f"    {r['source']}  {r['source_uri']}")
    if report.get("duplicates"):
        lines.append(f"  duplicates removed in favour of this sample: {len(report['duplicates'])}")
        for d in report["duplicates"]:
            score = f" score={d['score']:.4g}" if d["score"] is not None else ""
            lines.append(f"    [{d['stage']}] {d['reason']}{score}  {d['source_uri']}")
    return "\n".join(lines)
