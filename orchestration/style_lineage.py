"""The style part of `curate lineage`: a sample's style cluster, the style-reference pairs it is in, its creator
entry in the creator index."""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from orchestration.storage import TableStore

PAIRS = "style_reference_pairs"
CLUSTERS = "style_clusters"
CREATORS = "creator_style_index"


def style_lineage(store: TableStore, ids: list[str]) -> dict[str, Any]:
    """`style_cluster`, `style_pairs` and `creator_entry` for these samples (keys only where there is something)."""
    out: dict[str, Any] = {}
    if store.list_parts(store.dir(CLUSTERS)):
        rows = store.read_table(store.dir(CLUSTERS), filter=pads.field("sample_id").isin(ids)).to_pylist()
        if rows:
            out["style_cluster"] = rows
    if store.list_parts(store.dir(PAIRS)):
        table = store.read_table(store.dir(PAIRS))
        wanted = pc.is_in(table.column("target_id"), value_set=pa.array(ids))
        refs = [any(r in ids for r in refs) for refs in table.column("reference_ids").to_pylist()]
        mask = pc.or_(wanted, pa.array(refs, pa.bool_()))
        rows = table.filter(mask).to_pylist()
        if rows:
            out["style_pairs"] = [{**r, "role": "target" if r["target_id"] in ids else "reference"} for r in rows]
    if store.list_parts(store.dir(CREATORS)):
        entries = [r for r in store.read_table(store.dir(CREATORS)).to_pylist() if set(r["sample_ids"]) & set(ids)]
        if entries:
            out["creator_entry"] = [{k: v for k, v in e.items() if k != "sample_ids"} for e in entries]
    return out


def format_style_lineage(report: dict[str, Any]) -> list[str]:
    """Text lines of `style_lineage`'s keys."""
    lines = []
    for r in report.get("style_cluster") or []:
        creator = f", creator {r['creator']}" if r.get("creator") else ""
        lines.append(f"  style cluster {r['style_cluster']}{creator}")
    for e in report.get("creator_entry") or []:
        lines.append(f"  creator index: {e['name']} ({e['images']} image(s), {e['prototypes']} prototype(s), "
                     f"index {e['index_version']})")
    pairs = report.get("style_pairs") or []
    if pairs:
        lines.append(f"  style-reference pairs: {len(pairs)}")
        for p in pairs[:10]:
            lines.append(f"    [{p['kind']}] {p['role']} of {p['pair_id']}: strength {p['strength']:.2f}, style "
                         f"{p['style_similarity']:.3f}, content {p['content_similarity']:.3f}")
    return lines
