"""`curate opt-out`, `curate review` and `curate lineage`: the operator's commands over a storage root."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_URL_VALUE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.I)
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def validate_opt_out(kind: str, value: str) -> str:
    """The normalised value of a new opt-out request, or ValueError saying what is wrong with it."""
    from curation.opt_out import normalise

    norm = normalise(kind, value)
    if not norm:
        raise ValueError(f"empty {kind}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in norm):
        raise ValueError(f"{kind} {value!r} contains control characters")
    if kind == "sample_id" and not _HEX64.match(norm):
        raise ValueError(f"sample id {value!r} is not a hex SHA-256 (64 hex digits)")
    if kind == "url" and not _URL_VALUE.match(norm):
        raise ValueError(f"url {value!r} is not an absolute URL (scheme://...); use --domain for a whole site")
    if kind == "domain":
        try:
            ascii_host = norm.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_host = ""
        labels = ascii_host.split(".")
        if len(ascii_host) > 253 or len(labels) < 2 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError(f"domain {value!r} is not a host name like example.com (got {norm!r})")
    if kind == "artist" and len(norm) > 300:
        raise ValueError(f"artist name is {len(norm)} characters long; at most 300")
    return norm


def _opt_out_candidates(store, request) -> Any:
    """`source_images` rows (sample_id, source, source_uri, metadata) that might match `request`: a pushed-down
    filter on the sample id, or a case-insensitive substring of the URL, domain or artist's first word."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from curation.schema import SOURCE_IMAGES_SCHEMA

    value = request.value
    if request.kind == "sample_id":
        condition = pads.field("sample_id") == value
    else:
        needle = value.split()[0] if request.kind == "artist" else value
        if '"' in needle or "\\" in needle:  # JSON escapes these inside the metadata column: no pre-filter
            condition = None
        else:
            condition = (pc.match_substring(pads.field("source_uri"), needle, ignore_case=True)
                         | pc.match_substring(pads.field("metadata"), needle, ignore_case=True))
    columns = ["sample_id", "source", "source_uri", "metadata"]
    return store.read_table(store.asset_dir("source_images"), columns=columns, filter=condition,
                            schema=SOURCE_IMAGES_SCHEMA)


def opt_out_effect(store, request) -> dict[str, Any]:
    """What honouring `request` changes at the next run: the ingested samples it covers, which of them are curated
    now (kept by `rebalanced_images`) and in which curriculum stages' shards they are."""
    import pyarrow.dataset as pads

    from curation.opt_out import OptOutList

    single = OptOutList([request])
    candidates = _opt_out_candidates(store, request)
    covered: dict[str, list[str]] = {}
    for row in candidates.to_pylist():
        if single.match(row["sample_id"], row["source_uri"], row["metadata"]):
            covered.setdefault(row["sample_id"], []).append(row["source_uri"])
    ids = sorted(covered)
    curated: set[str] = set()
    shards: dict[str, list[str]] = {}
    if ids:
        within = pads.field("sample_id").isin(ids)
        rebalanced = store.read_table(store.dir("rebalanced_images"), columns=["sample_id", "kept"], filter=within)
        curated = {r["sample_id"] for r in rebalanced.to_pylist() if r["kept"]}
        for stage in store.list_partitions("training_shards"):
            rows = store.read_table(store.dir("training_shards", stage), columns=["sample_id"], filter=within)
            for sid in set(rows.column("sample_id").to_pylist()) if rows.num_rows else ():
                shards.setdefault(sid, []).append(stage)
    samples = [{"sample_id": sid, "source_uris": covered[sid], "curated": sid in curated,
                "shard_stages": sorted(shards.get(sid, []), key=lambda s: (len(s), s))} for sid in ids]
    return {"samples": samples, "curated": len(curated), "in_shards": len(shards)}


def _describe_opt_out(request) -> str:
    extra = ", ".join(p for p in (f"reason: {request.reason}" if request.reason else "",
                                  f"by {request.added_by}" if request.added_by else "",
                                  f"at {request.added_at}" if request.added_at else "") if p)
    return f"{request.kind} {request.value!r}" + (f" ({extra})" if extra else "")


def cmd_opt_out_add(args: argparse.Namespace) -> int:
    import time

    from curation.opt_out import make, normalise
    from orchestration.opt_outs import add_opt_outs, list_path, load_opt_outs
    from orchestration.storage import TableStore

    kind, raw = next((k, v) for k, v in (("sample_id", args.sample_id), ("url", args.url), ("domain", args.domain),
                                         ("artist", args.artist)) if v is not None)
    try:
        value = validate_opt_out(kind, raw)
    except ValueError as exc:
        print(f"curate opt-out add: {exc}", file=sys.stderr)
        return 2
    reason = " ".join((args.reason or "").split())
    added_by = args.added_by if args.added_by is not None else _user()
    store = TableStore(args.storage)
    request = make(kind, value, reason=reason, added_by=added_by)
    for attempt in range(50):  # another `add` holds the list for a moment at most
        try:
            with store.lock("opt_out", owner=f"curate opt-out add ({added_by})"):
                existing = next((e for e in load_opt_outs(store).entries
                                 if e.kind == kind and normalise(kind, e.value) == value), None)
                if existing is None:
                    add_opt_outs(store, [request])
            break
        except (ValueError, FileNotFoundError) as exc:  # a malformed list is reported, never rewritten
            print(f"curate opt-out add: {exc}; nothing was added", file=sys.stderr)
            return 2
        except RuntimeError:
            if attempt == 49:
                raise
            time.sleep(0.2)
    where = store.uri(list_path(store))
    if existing is not None:
        print(f"already listed: {_describe_opt_out(existing)}; {where} is unchanged")
        return 0
    print(f"added to {where}: {_describe_opt_out(request)}")
    effect = None if args.no_preview else opt_out_effect(store, request)
    print(_opt_out_plan(args.storage, effect))
    return 0


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _opt_out_plan(storage: str, effect: dict[str, Any] | None, limit: int = 20) -> str:
    lines = []
    if effect is not None:
        samples = effect["samples"]
        lines.append(f"it covers {len(samples)} ingested sample(s) now: {effect['curated']} curated, "
                     f"{effect['in_shards']} in training shards")
        for s in samples[:limit]:
            where = "curated" if s["curated"] else "not curated"
            if s["shard_stages"]:
                where += ", in shards of stage " + ", ".join(s["shard_stages"])
            lines.append(f"  {s['sample_id']}  {s['source_uris'][0]}  ({where})")
        if len(samples) > limit:
            lines.append(f"  ... and {len(samples) - limit} more")
    lines.append(f"on the next `curate run --storage {storage}` (nothing changes before it):")
    lines.append("  - source_images refuses new inputs it covers (decision opt_out / opted_out)")
    lines.append("  - rebalanced_images is recomputed (the list changed) and drops the curated samples it covers, "
                 "each with an opt_out / opted_out decision naming this request")
    lines.append("  - training_shards re-applies the list in every curriculum stage: no covered sample stays in a "
                 "shard")
    return "\n".join(lines)


def cmd_opt_out_list(args: argparse.Namespace) -> int:
    import pyarrow.dataset as pads

    from orchestration.opt_outs import load_opt_outs
    from orchestration.storage import TableStore

    store = TableStore(args.storage)
    entries = load_opt_outs(store).entries
    # how many samples each request has removed so far (ledger rows of stage opt_out, read with a filter)
    ledger = store.read_decisions(filter=pads.field("stage") == "opt_out")
    honoured: dict[tuple[str, str], set[str]] = {}
    for d in ledger.select(["sample_id", "details"]).to_pylist():
        details = json.loads(d["details"] or "{}")
        honoured.setdefault((details.get("kind"), details.get("value")), set()).add(d["sample_id"])
    rows = [{"kind": e.kind, "value": e.value, "reason": e.reason, "added_by": e.added_by, "added_at": e.added_at,
             "samples_removed": len(honoured.get((e.kind, e.value), ()))} for e in entries]
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no opt-out requests for {args.storage}")
        return 0
    for row in rows:
        extra = "  ".join(p for p in (row["reason"] and f"reason: {row['reason']}",
                                      row["added_by"] and f"by {row['added_by']}", row["added_at"]) if p)
        print(f"{row['kind']:<9}  {row['value']}  [{row['samples_removed']} sample(s) removed so far]"
              + (f"  {extra}" if extra else ""))
    print(f"{len(rows)} request(s)")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from orchestration.lineage import find_lineage, format_lineage

    report = find_lineage(args.storage, args.sample)
    if not report["records"] and not report["decisions"]:
        print(f"nothing about {args.sample!r} under {args.storage}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, default=str) if args.json else format_lineage(report))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from orchestration import review
    from orchestration.storage import TableStore

    store = TableStore(args.storage)
    try:
        if args.review_command == "list":
            rows = review.review_rows(store, args.status)
            if args.json:
                for row in rows:
                    print(json.dumps(row, ensure_ascii=False, default=str))
            else:
                print(review.format_rows(rows))
            return 0
        if args.review_command == "import":
            verdicts = review.import_csv(store, args.csv, args.reviewer)
        else:
            verdicts = review.record(store, args.ids, args.review_command, args.reviewer, args.note)
    except review.ReviewError as exc:
        print(f"curate review {args.review_command}: {exc}", file=sys.stderr)
        return 1
    kinds = {k: sum(v.verdict == k for v in verdicts) for k in ("accept", "reject")}
    print(f"recorded {len(verdicts)} verdict(s) ({kinds['accept']} accept, {kinds['reject']} reject) by "
          f"{', '.join(sorted({v.reviewer for v in verdicts}))} in {store.uri(store.dir(review.REVIEW_LOG))}")
    for v in verdicts:
        print(f"  {v.verdict:<6}  {v.sample_id}  {v.time.isoformat()}" + (f"  ({v.note})" if v.note else ""))
    print(f"they apply at the next materialization: curate run --select midtraining_candidates --storage "
          f"{args.storage}")
    return 0
