"""Ingest: raw items of one work unit -> `source_images` rows, `decisions` rows and counts.

Pure: no Dagster, no Ray, no storage. The asset runs `ingest_unit` in a Ray task per work unit.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from curation.ai_metadata import metadata_signals
from curation.decisions import Decision, StageCounts
from curation.image_io import ImageRejected, ProbeLimits, extension_matches, probe_image
from curation.opt_out import OptOutList, opt_out_decision
from curation.provenance import c2pa_manifest_store
from curation.schema import SOURCE_IMAGES_SCHEMA
from curation.sources import RawItem, ReadLimits, WorkUnit, licence_of, read_unit
from curation.tdm import TdmPolicy, may_carry_c2pa, tdm_decision, tdm_reservation

log = logging.getLogger(__name__)

INGEST_CODE_VERSION = "ingest-2"
ROW_GROUP_SIZE = 256
"""Rows per Parquet row group of `source_images` (images are large; a few hundred rows per group)."""


@dataclass(frozen=True)
class IngestConfig:
    """Everything that decides how a source drop is ingested."""

    probe: ProbeLimits = field(default_factory=ProbeLimits)
    """Decoding limits (pixel limit, minimum side, frame limit)."""
    read: ReadLimits = field(default_factory=ReadLimits)
    """Reading limits (file and sidecar sizes, unit sizes)."""
    default_licence: str | None = None
    """Licence recorded for samples whose sidecars name none (e.g. the licence of a whole licensed archive)."""
    tdm: TdmPolicy = field(default_factory=TdmPolicy)
    """Machine-readable TDM reservations (PLUS DataMining, C2PA/CAWG training-mining, TDMRep, noai) that drop an
    input at ingest (`curation.tdm`)."""


@dataclass
class UnitResult:
    """What one work unit produced."""

    rows: pa.Table
    decisions: list[Decision]
    counts: StageCounts
    bytes_read: int = 0
    """Bytes of the input files read (the images; sidecars are small and not counted)."""


def sha256_hex(data: bytes) -> str:
    """The `sample_id` of some bytes."""
    return hashlib.sha256(data).hexdigest()


def metadata_json(metadata: dict[str, Any]) -> str:
    """Valid, storable JSON: no NaN / Infinity (strict JSON has none), and `\\u` escapes where a string holds a
    lone surrogate that UTF-8 cannot encode."""
    text = json.dumps(metadata, ensure_ascii=False, sort_keys=True, allow_nan=False)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return json.dumps(metadata, ensure_ascii=True, sort_keys=True, allow_nan=False)


def ingest_item(item: RawItem, source: str, config: IngestConfig) -> tuple[dict[str, Any] | None, list[Decision]]:
    """Turn one raw item into a `source_images` row (or None) and its ledger entries.

    Args:
        item: from `read_unit`.
        source: the partition key of the drop.
        config: ingest settings.

    Returns:
        (row, decisions): `row` is None when the item is dropped, and then exactly one decision is a `drop`.
        Kept rows that were normalised get a `keep` decision naming each normalisation.
    """
    sample_id = sha256_hex(item.data) if item.data is not None else None
    if item.reason is not None:
        return None, [Decision(sample_id, item.source_uri, "ingest", "drop", item.reason, details=item.details)]
    assert item.data is not None
    try:
        facts = probe_image(item.data, config.probe, with_metadata=True)
    except ImageRejected as rej:
        details = dict(rej.details)
        if rej.metadata is not None:  # refused for its size only: still say if it was AI-made (for audits)
            signals = metadata_signals({"embedded": rej.metadata, "sidecar": item.sidecar})
            if signals:
                details["ai_signals"] = signals
        return None, [Decision(sample_id, item.source_uri, "ingest", "drop", rej.reason, details=details)]
    notes = list(facts.notes) + list(item.notes)
    if not extension_matches(facts.format, item.name):
        notes.append(f"extension_mismatch_is_{facts.format.lower()}")
    metadata = {"embedded": facts.metadata or {}, "sidecar": item.sidecar}
    reservation, tdm_note = check_tdm(item.data, facts.format, metadata, config.tdm)
    if reservation is not None:
        return None, [tdm_decision(sample_id, item.source_uri, reservation)]
    if tdm_note:
        notes.append(tdm_note)
    if item.uri_bytes is not None:  # the display form in source_uri is not lossless; these bytes are
        metadata["source_uri_bytes_hex"] = item.uri_bytes.hex()
    row = {
        "sample_id": sample_id,
        "source": source,
        "source_uri": item.source_uri,
        "image": item.data,
        "byte_size": len(item.data),
        "format": facts.format,
        "width": facts.width,
        "height": facts.height,
        "mode": facts.mode,
        "is_animated": facts.is_animated,
        "n_frames": facts.n_frames,
        "exif_orientation": facts.exif_orientation,
        "has_icc": facts.has_icc,
        "licence": licence_of(item.sidecar) or config.default_licence,
        "metadata": metadata_json(metadata),
        "notes": notes,
    }
    decisions = []
    if notes:
        details = {"notes": notes, "mode": facts.mode, "format": facts.format}
        if item.uri_bytes is not None:
            details["source_uri_bytes_hex"] = item.uri_bytes.hex()
        decisions.append(Decision(sample_id, item.source_uri, "ingest", "keep", "normalised", details=details))
    return row, decisions


def check_tdm(data: bytes, fmt: str | None, metadata: dict[str, Any], policy: TdmPolicy):
    """(the barring TDM reservation or None, a note when the C2PA store that might hold one could not be read)."""
    if not policy.enabled:
        return None, None
    store, note = None, None
    if may_carry_c2pa(data):
        store, _, error = c2pa_manifest_store(data, fmt)
        if error:  # the reservation, if any, is unknown: say so on the row rather than read it as "none"
            note = "tdm_c2pa_unreadable"
    return tdm_reservation(metadata, store, policy), note


def ingest_unit(unit: WorkUnit, source: str, config: IngestConfig, opt_outs: OptOutList | None = None) -> UnitResult:
    """Read and ingest every input of one work unit.

    Args:
        unit: from `plan_units`.
        source: the partition key of the drop.
        config: ingest settings.
        opt_outs: requests to honour: a covered input is dropped (`opted_out`, stage `opt_out`).

    Returns:
        The kept rows (schema `SOURCE_IMAGES_SCHEMA`), every decision, and counts that balance
        (total = kept + dropped).
    """
    rows: list[dict[str, Any]] = []
    decisions: list[Decision] = []
    counts = StageCounts()
    bytes_read = 0
    for item in read_unit(unit, config.read):
        counts.total += 1
        bytes_read += len(item.data) if item.data is not None else 0
        try:
            row, item_decisions = ingest_item(item, source, config)
        except Exception as exc:  # one input that breaks a library must not take the rest of the unit down
            log.warning("ingest of %s failed: %s", item.source_uri, exc, exc_info=True)
            sample_id = sha256_hex(item.data) if item.data is not None else None
            row, item_decisions = None, [Decision(sample_id, item.source_uri, "ingest", "drop", "ingest_error",
                                                  details={"error": f"{type(exc).__name__}: {exc}"})]
        if row is not None and opt_outs and (request := opt_outs.match(row["sample_id"], row["source_uri"],
                                                                         row["metadata"])):
            row, item_decisions = None, [opt_out_decision(row["sample_id"], row["source_uri"], request)]
        decisions.extend(item_decisions)
        for d in item_decisions:
            if d.decision == "drop":
                counts.dropped[d.reason] += 1
        if row is not None:
            rows.append(row)
            counts.kept += 1
            counts.notes.update(row["notes"])
    columns = {name: [row[name] for row in rows] for name in SOURCE_IMAGES_SCHEMA.names}
    table = pa.table(columns, schema=SOURCE_IMAGES_SCHEMA)
    return UnitResult(table, decisions, counts, bytes_read)
