"""Lineage of one sample: where it came from, every decision any stage made about it, and everything downstream that
holds it: OCR, caption (with its provenance), prompt variants, rebalancing, the shard file and row of each curriculum
stage, and the checkpoint trained on that shard.

Every read is filtered on the sample ids (pushed down to the Parquet reader; shards are located through their
row-group statistics), so a lineage query stays fast on a large storage. An asset not materialized yet, or without
a row for the sample, is left out of the report.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curation.schema import SOURCE_IMAGES_SCHEMA
from curation.sources import canonical_uri
from orchestration.sample_parts import current_rows
from orchestration.storage import SUCCESS_MARKER, TableStore
from orchestration.style_lineage import format_style_lineage, style_lineage

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
        `{"query", "sample_ids", "records", "decisions", "representative", "duplicates"}` (records are
        `source_images` rows without image bytes), plus, for the assets that hold the sample: `rebalancing`, `ocr`,
        `captions`, `prompt_variants` (lists of rows, `sample_id` in each), `shards` (one entry per shard row:
        stage, shard file, row index, bucket, and the `checkpoint` trained on that shard when there is one) and
        `curated` (kept by rebalancing now; present once `rebalanced_images` is materialized).
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
    report = {"query": query, "sample_ids": ids, "records": records, "decisions": decisions,
              "representative": {"sample_id": representative, "records": rep_records} if representative else None,
              "duplicates": duplicates}
    if ids:
        report.update(downstream(store, ids))
    return report


_REBALANCE_COLUMNS = ["sample_id", "source_uri", "cluster_path", "concepts", "p_cluster", "p_concept",
                      "keep_probability", "sample_weight", "balanced_weight", "kept"]
_OCR_COLUMNS = ["sample_id", "text", "lines", "dropped_low_confidence", "backend", "error"]
_CAPTION_COLUMNS = ["sample_id", "caption", "backend", "model", "prompt_version", "inputs", "attempts", "failure",
                    "failure_detail", "fallback_from", "quoted", "entities"]
_VARIANT_COLUMNS = ["sample_id", "tags", "short", "medium", "long", "backend", "model", "prompt_version",
                    "fallback_reason", "caption_backend", "long_is_distinct", "long_note", "medium_note"]
_SHARD_COLUMNS = ["bucket", "width", "height", "sample_weight", "caption_backend"]
CHECKPOINT_ASSET = "dit_checkpoint"


def _present(store: TableStore, directory: str, columns: list[str]) -> list[str]:
    """The wanted columns that the asset's first part has (older parts may predate a column)."""
    parts = store.list_parts(directory)
    if not parts:
        return []
    with store.fs.open_input_file(parts[0]) as f:
        names = set(pq.read_schema(f).names)
    return [c for c in columns if c in names]


def _sample_rows(store: TableStore, asset: str, ids: list[str], columns: list[str]) -> list[dict[str, Any]]:
    """Current rows of a sample-keyed asset for these ids (one per sample), or [] if it is not materialized."""
    present = _present(store, store.dir(asset), columns)
    if "sample_id" not in present:
        return []
    return current_rows(store, asset, ids, columns=present).to_pylist()


def downstream(store: TableStore, ids: list[str]) -> dict[str, Any]:
    """What the assets after ingest hold about these samples; keys only for assets that have rows for them."""
    out: dict[str, Any] = {}
    directory = store.dir("rebalanced_images")
    present = _present(store, directory, _REBALANCE_COLUMNS)
    if "sample_id" in present:
        rows = store.read_table(directory, columns=present, filter=pads.field("sample_id").isin(ids)).to_pylist()
        if rows:
            out["rebalancing"] = rows
        # the curated set now; OCR, captions and variants stay cached for a sample dropped later (e.g. opted out)
        out["curated"] = any(r.get("kept", True) for r in rows)
    if rows := _sample_rows(store, "ocr_annotations", ids, _OCR_COLUMNS):
        out["ocr"] = rows
    if rows := _sample_rows(store, "captions", ids, _CAPTION_COLUMNS):
        for row in rows:
            if isinstance(row.get("inputs"), str):
                try:
                    row["inputs"] = json.loads(row["inputs"])
                except ValueError:
                    pass
        out["captions"] = rows
    if rows := _sample_rows(store, "prompt_variants", ids, _VARIANT_COLUMNS):
        out["prompt_variants"] = rows
    if shards := shard_rows(store, ids):
        out["shards"] = shards
    out.update(style_lineage(store, ids))
    return out


def locate_in_part(store: TableStore, path: str, ids: set[str],
                   columns: list[str] = ()) -> list[dict[str, Any]]:
    """Rows of one Parquet part whose `sample_id` is in `ids`: `{"sample_id", "row", <columns>}`, `row` being the
    0-based position in the file. Row groups whose sample_id statistics exclude every id are not read."""
    out = []
    lo, hi = min(ids), max(ids)
    with store.fs.open_input_file(path) as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        if "sample_id" not in names:
            return []
        position = names.index("sample_id")
        wanted = [c for c in columns if c in names]
        offset = 0
        for g in range(parquet.num_row_groups):
            meta = parquet.metadata.row_group(g)
            stats = meta.column(position).statistics
            skip = (stats is not None and stats.has_min_max
                    and (_text(stats.max) < lo or _text(stats.min) > hi))
            if not skip:
                column = parquet.read_row_group(g, columns=["sample_id"]).column("sample_id")
                hits = pc.indices_nonzero(pc.is_in(column, value_set=pa.array(sorted(ids), column.type))).to_pylist()
                if hits:
                    extra = parquet.read_row_group(g, columns=wanted).take(hits).to_pylist() if wanted else [
                        {} for _ in hits]
                    for i, fields in zip(hits, extra, strict=True):
                        out.append({"sample_id": column[i].as_py(), "row": offset + i, **fields})
            offset += meta.num_rows
    return out


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _stage_order(stage: str) -> tuple:
    return (0, int(stage), stage) if stage.isdigit() else (1, 0, stage)


def shard_rows(store: TableStore, ids: list[str]) -> list[dict[str, Any]]:
    """Where the samples are in `training_shards`: stage, shard file, row index, bucket and weight, and the checkpoint
    trained on that shard (from `dit_checkpoint/<stage>/_SUCCESS.json`) when there is one."""
    wanted = set(ids)
    out = []
    for stage in sorted(store.list_partitions("training_shards"), key=_stage_order):
        marker = checkpoint_marker(store, stage)
        for path in store.list_parts(store.dir("training_shards", stage)):
            for hit in locate_in_part(store, path, wanted, _SHARD_COLUMNS):
                entry = {"stage": stage, "shard": store.uri(path), **hit}
                if marker is not None and trained_on(marker, path):
                    entry["checkpoint"] = _checkpoint_entry(store, marker, path)
                out.append(entry)
    return out


def checkpoint_marker(store: TableStore, stage: str) -> dict[str, Any] | None:
    """The completion marker of a stage's DiT checkpoint (`_SUCCESS.json`, or `_SUCCESS`), with its path, or None."""
    directory = store.dir(CHECKPOINT_ASSET, stage)
    for name in (SUCCESS_MARKER, "_SUCCESS"):
        path = posixpath.join(directory, name)
        try:
            marker = store.read_json(path)
        except ValueError:  # not JSON (an empty Hadoop-style marker): nothing to learn from it
            marker = None
        if isinstance(marker, dict) and marker.get("checkpoint"):
            return {**marker, "_marker": path}
    return None


def _tail(path: str, n: int) -> tuple[str, ...]:
    parts = [p for p in path.replace("\\", "/").split("/") if p and p != "."]
    return tuple(parts[-n:])


def trained_on(marker: dict[str, Any], shard_path: str) -> bool:
    """True if the checkpoint marker lists this shard file. Paths are compared as given; when the two are written
    differently (absolute vs storage-relative, another mount, a URI), by `<stage>/<file name>`, or by the file name
    alone when the marker names only files."""
    shards = [str(s) for s in marker.get("shards") or []]
    if shard_path in shards:
        return True
    mine = _tail(shard_path, 2)
    for s in shards:
        theirs = _tail(s, 2)
        if theirs == mine or (len(theirs) == 1 and theirs[-1] == mine[-1]):
            return True
    return False


def _checkpoint_entry(store: TableStore, marker: dict[str, Any], shard_path: str) -> dict[str, Any]:
    checkpoint = str(marker["checkpoint"])
    if "://" not in checkpoint and not checkpoint.startswith("/"):
        checkpoint = posixpath.join(store.base, checkpoint)  # storage-relative
    entry = {"checkpoint": store.uri(checkpoint) if "://" not in checkpoint else checkpoint,
             **{k: marker[k] for k in ("stage", "steps", "final_loss", "run_id", "init_from", "recipe", "model_size")
                if k in marker}}
    # a shard rewritten after the checkpoint was trained (a re-curation not yet followed by training): the checkpoint
    # saw the earlier contents of this file, which may not have held this row
    try:
        shard_mtime = store.fs.get_file_info(shard_path).mtime
        marker_mtime = store.fs.get_file_info(marker["_marker"]).mtime
        entry["shard_rewritten_after_training"] = bool(shard_mtime and marker_mtime and shard_mtime > marker_mtime)
    except OSError:
        pass
    return entry


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
    lines += format_downstream(report, multiple=len(report["sample_ids"]) > 1)
    return "\n".join(lines)


def _clip(text: str, limit: int = 240) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _who(row: dict[str, Any], multiple: bool) -> str:
    return f" ({row['sample_id'][:12]})" if multiple else ""


def _inputs_summary(inputs: Any) -> str:
    if not isinstance(inputs, dict):
        return ""
    parts = []
    if inputs.get("ocr_lines"):
        parts.append(f"{len(inputs['ocr_lines'])} OCR line(s)")
    fields = inputs.get("metadata_fields") or list(inputs.get("metadata") or {})
    if fields:
        parts.append("metadata " + ", ".join(map(str, fields)))
    if inputs.get("visual_facts"):
        parts.append("visual facts")
    rest = sorted(k for k in inputs if k not in ("ocr_lines", "ocr_lines_below_min_score", "metadata",
                                                  "metadata_fields", "visual_facts"))
    return "; ".join(parts + rest)


def format_downstream(report: dict[str, Any], multiple: bool = False) -> list[str]:
    """Text lines for rebalancing, OCR, caption, prompt variants and shards/checkpoints (sections that exist)."""
    lines: list[str] = []
    cached = [k for k in ("ocr", "captions", "prompt_variants") if report.get(k)]
    lines += format_style_lineage(report)
    if report.get("curated") is False:
        lines.append("  not in the curated set now (see the decisions)"
                     + (f"; {', '.join(cached)} below are cached from an earlier run" if cached else ""))
    for r in report.get("rebalancing") or []:
        state = "kept" if r.get("kept") else "dropped"
        cluster = "/".join(str(c) for c in r.get("cluster_path") or [])
        concepts = ", ".join(r.get("concepts") or []) or "-"
        weight = r.get("sample_weight")
        lines.append(f"  rebalancing{_who(r, multiple)}: {state}, sample_weight {weight:.4g}"
                     f" (balanced {r.get('balanced_weight', 0):.4g}, keep p {r.get('keep_probability', 0):.3g}),"
                     f" cluster {cluster or '-'}, concepts: {concepts}")
    for r in report.get("ocr") or []:
        found = r.get("lines") or []
        error = f", error: {r['error']}" if r.get("error") else ""
        lines.append(f"  ocr{_who(r, multiple)} [{r.get('backend')}]: {len(found)} line(s),"
                     f" {r.get('dropped_low_confidence', 0)} dropped below the threshold{error}")
        for line in found:
            lines.append(f"    {json.dumps(line['text'], ensure_ascii=False)}  {line['score']:.3f}"
                         f"  {line.get('language', '')}")
    for r in report.get("captions") or []:
        attempts = f", {r['attempts']} attempt(s)" if r.get("attempts") is not None else ""
        fallback = f", fallback from {r['fallback_from']}" if r.get("fallback_from") else ""
        lines.append(f"  caption{_who(r, multiple)} [{r.get('backend')} / {r.get('model') or '-'} / prompt "
                     f"{r.get('prompt_version') or '-'}{attempts}{fallback}]:")
        lines.append(f"    {_clip(r.get('caption') or '(empty)', 1000)}")
        if r.get("failure"):
            lines.append(f"    failure: {r['failure']} {r.get('failure_detail') or ''}".rstrip())
        if summary := _inputs_summary(r.get("inputs")):
            lines.append(f"    inputs: {summary}")
    for r in report.get("prompt_variants") or []:
        fallback = f", fallback: {r['fallback_reason']}" if r.get("fallback_reason") else ""
        lines.append(f"  prompt variants{_who(r, multiple)} [{r.get('backend')} / {r.get('model') or '-'} / prompt "
                     f"{r.get('prompt_version') or '-'}{fallback}]:")
        for kind in ("tags", "short", "medium", "long"):
            if kind in r:
                text = r[kind] or (f"(none: {r['long_note']})" if kind == "long" and r.get("long_note") else "")
                lines.append(f"    {kind + ':':<7} {_clip(text)}")
        if r.get("medium_note"):  # why medium is shorter than its bounds
            lines.append(f"    note:   {_clip(r['medium_note'])}")
    if report.get("shards"):
        lines.append("  shards:")
        for e in report["shards"]:
            weight = f"  weight {e['sample_weight']:.4g}" if e.get("sample_weight") is not None else ""
            lines.append(f"    [{e['stage']}] {e['shard']} row {e['row']}  bucket {e.get('bucket', '-')}"
                         f"{weight}{_who(e, multiple)}")
            ckpt = e.get("checkpoint")
            if ckpt:
                final = ckpt.get("final_loss")
                loss = f", final loss {final:.4g}" if isinstance(final, int | float) else ""
                stale = ("; the shard was rewritten after training" if ckpt.get("shard_rewritten_after_training")
                         else "")
                lines.append(f"        checkpoint {ckpt['checkpoint']} ({ckpt.get('steps', '?')} steps{loss},"
                             f" run {ckpt.get('run_id', '?')}{stale})")
    return lines
