"""The midtraining review loop: reviewers' verdicts on `midtraining_candidates`, kept as an append-only log.

The log lives at `<storage>/midtraining_review/_/part-NNNNN.parquet`: one part per `curate review accept | reject |
import` (`curation.midtraining.VERDICTS_SCHEMA`: sample_id, verdict, reviewer, time in UTC, note), each written
atomically under a lock; no part is ever rewritten. The latest verdict per sample wins. The next materialization of
`midtraining_candidates` reads the log: a rejected sample leaves the candidates (its slot goes to the next best of
the same list), an accepted one stays whatever the selection says.

No Dagster here: the CLI and the asset both read and write through `TableStore`.
"""

from __future__ import annotations

import csv
import datetime
import getpass
import os
import posixpath
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from pathlib import Path
from time import sleep
from typing import Any

import pyarrow as pa

from curation.midtraining import VERDICTS_SCHEMA, Verdict, latest_verdicts, verdicts_table
from orchestration.storage import TableStore

REVIEW_LOG = "midtraining_review"
CANDIDATES = "midtraining_candidates"
REBALANCED = "rebalanced_images"
STATUSES = ("pending", "accepted", "rejected")
LOCK_ATTEMPTS = 50
MIN_PREFIX = 6
"""Shortest sample-id prefix accepted for an id (a unique prefix of the hex SHA-256)."""
_VERDICT_WORDS = {"accept": "accept", "accepted": "accept", "reject": "reject", "rejected": "reject"}
_STATUS_OF = {"accept": "accepted", "reject": "rejected", None: "pending"}


class ReviewError(ValueError):
    """A review command that cannot be carried out (unknown or ambiguous ids, a bad CSV, nothing to review)."""


def default_reviewer() -> str:
    """The reviewer when none is given: $USER (or $USERNAME), else the login name.

    Raises:
        ReviewError: no name can be found (pass one explicitly).
    """
    name = os.environ.get("USER") or os.environ.get("USERNAME")
    if name:
        return name
    try:
        return getpass.getuser()
    except (KeyError, OSError) as exc:
        raise ReviewError("cannot tell who the reviewer is: pass --reviewer NAME") from exc


# ---------------------------------------------------------------------------------------------------- the log


def read_log(store: TableStore) -> pa.Table:
    """Every verdict ever recorded, in log order (`VERDICTS_SCHEMA`; empty when nobody reviewed yet)."""
    parts = store.list_parts(store.dir(REVIEW_LOG))
    if not parts:
        return VERDICTS_SCHEMA.empty_table()
    return pa.concat_tables([store.read_part(p).select(VERDICTS_SCHEMA.names).cast(VERDICTS_SCHEMA) for p in parts])


def latest(store: TableStore) -> dict[str, Verdict]:
    """sample_id -> its latest verdict."""
    return latest_verdicts(read_log(store))


def log_fingerprint(store: TableStore) -> list[str]:
    """Names of the log's parts (the log only grows, so this identifies its state)."""
    return [posixpath.basename(p) for p in store.list_parts(store.dir(REVIEW_LOG))]


def append(store: TableStore, verdicts: Sequence[Verdict], owner: str = "curate review") -> str | None:
    """Append verdicts to the log as one new part (atomic; under the log's lock).

    Args:
        store: the storage root.
        verdicts: the verdicts to add (nothing is written when empty).
        owner: who holds the lock meanwhile (shown to a concurrent writer).

    Returns:
        The path of the new part, or None when there was nothing to write.
    """
    if not verdicts:
        return None
    directory = store.dir(REVIEW_LOG)
    for attempt in range(LOCK_ATTEMPTS):  # another reviewer's append holds the log for a moment at most
        try:
            with store.lock(REVIEW_LOG, owner=owner):
                parts = store.list_parts(directory)
                index = max((int(posixpath.basename(p)[5:10]) for p in parts), default=-1) + 1
                path = store.part_path(REVIEW_LOG, None, index)
                store.write_parquet(path, verdicts_table(verdicts),
                                    {"verdicts": len(verdicts), "reviewers": sorted({v.reviewer for v in verdicts})})
            return path
        except RuntimeError as exc:  # the lock is held
            if attempt == LOCK_ATTEMPTS - 1:
                raise ReviewError(str(exc)) from exc
            sleep(0.2)
    raise AssertionError("not reached")


# --------------------------------------------------------------------------------------------------- sample ids


def known_samples(store: TableStore) -> list[str]:
    """Ids a verdict may name: the current candidates and every kept sample of `rebalanced_images`, sorted."""
    ids: set[str] = set()
    candidates = store.read_table(store.dir(CANDIDATES), columns=["sample_id"])
    if candidates.num_rows:
        ids.update(candidates.column("sample_id").to_pylist())
    curated = store.read_table(store.dir(REBALANCED), columns=["sample_id", "kept"])
    if curated.num_rows:
        ids.update(s for s, k in zip(curated.column("sample_id").to_pylist(), curated.column("kept").to_pylist(),
                                     strict=True) if k)
    return sorted(ids)


def resolve_ids(given: Iterable[str], known: Sequence[str]) -> list[str]:
    """Full sample ids for ids or unique prefixes (at least `MIN_PREFIX` characters), in the order given.

    Args:
        given: what the reviewer typed.
        known: the sorted ids that exist.

    Returns:
        One full id per entry of `given` (duplicates kept).

    Raises:
        ReviewError: naming every unknown id and every ambiguous prefix.
    """
    resolved, unknown, ambiguous, short = [], [], [], []
    for raw in given:
        sid = raw.strip().lower()
        if len(sid) < MIN_PREFIX:
            short.append(raw)
            continue
        start = bisect_left(known, sid)
        matches = []
        for candidate in known[start:]:
            if not candidate.startswith(sid):
                break
            matches.append(candidate)
            if candidate == sid or len(matches) > 3:
                break
        if matches and matches[0] == sid:
            resolved.append(sid)
        elif len(matches) == 1:
            resolved.append(matches[0])
        elif matches:
            ambiguous.append(f"{raw} (matches {', '.join(m[:16] for m in matches[:3])}, ...)")
        else:
            unknown.append(raw)
    problems = []
    if unknown:
        problems.append(f"unknown sample id(s): {', '.join(unknown)} (neither a midtraining candidate nor a kept "
                        f"sample of {REBALANCED}; see `curate review list`)")
    if ambiguous:
        problems.append(f"ambiguous prefix(es): {'; '.join(ambiguous)}")
    if short:
        problems.append(f"id prefix(es) shorter than {MIN_PREFIX} characters: {', '.join(short)}")
    if problems:
        raise ReviewError("; ".join(problems))
    return resolved


def _known_or_fail(store: TableStore) -> list[str]:
    known = known_samples(store)
    if not known:
        raise ReviewError(f"nothing to review under {store.root}: materialize midtraining_candidates first "
                          f"(curate run --select midtraining_candidates --storage {store.root})")
    return known


# ------------------------------------------------------------------------------------------------------ verdicts


def record(store: TableStore, ids: Sequence[str], verdict: str, reviewer: str | None = None, note: str | None = None,
           time: datetime.datetime | None = None) -> list[Verdict]:
    """Record one verdict for each sample (ids or unique prefixes); all or nothing.

    Args:
        store: the storage root.
        ids: sample ids or unique prefixes.
        verdict: 'accept' or 'reject'.
        reviewer: who decided (None: `default_reviewer()`).
        note: an optional free-text note stored with each verdict.
        time: when (None: now, UTC).

    Returns:
        The verdicts appended to the log.

    Raises:
        ReviewError: an unknown or ambiguous id, a bad verdict, or nothing materialized yet; nothing is written.
    """
    kind = _VERDICT_WORDS.get(verdict.strip().lower())
    if kind is None:
        raise ReviewError(f"verdict must be 'accept' or 'reject', got {verdict!r}")
    if not ids:
        raise ReviewError("no sample ids given")
    full = resolve_ids(ids, _known_or_fail(store))
    who = reviewer or default_reviewer()
    stamp = time or datetime.datetime.now(datetime.UTC)
    verdicts = [Verdict(sample_id=sid, verdict=kind, reviewer=who, time=stamp, note=note or None)
                for sid in dict.fromkeys(full)]
    append(store, verdicts)
    return verdicts


def read_csv(path: str | Path, reviewer: str | None = None,
             time: datetime.datetime | None = None) -> list[tuple[int, str, Verdict]]:
    """Parse a reviewer's CSV without resolving its ids: (line, id as written, verdict with that id).

    Columns: `sample_id`, `verdict` ('accept'/'accepted'/'reject'/'rejected'), optional `note`, `reviewer` (a row's
    own reviewer wins over `reviewer`) and `time` (ISO 8601; default `time`, else now).

    Raises:
        ReviewError: a missing column, an unreadable file, or bad rows (every bad line is named).
    """
    stamp = time or datetime.datetime.now(datetime.UTC)
    out, errors = [], []
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
            missing = {"sample_id", "verdict"} - set(fields)
            if missing:
                raise ReviewError(f"{path}: missing column(s) {sorted(missing)} (need sample_id, verdict; "
                                  f"optional note, reviewer, time)")
            fallback = None
            for row in reader:
                line = reader.line_num  # the physical line (blank lines are skipped by the reader)
                def cell(name: str, row: dict = row) -> str:
                    return (row.get(fields.get(name, name)) or "").strip()

                if not any(cell(name) for name in fields):
                    continue  # blank line
                kind = _VERDICT_WORDS.get(cell("verdict").lower())
                sid = cell("sample_id")
                if kind is None or not sid:
                    errors.append(f"line {line}: " + ("empty sample_id" if not sid else
                                                      f"verdict {cell('verdict')!r} is not accept or reject"))
                    continue
                who = cell("reviewer") or reviewer
                if not who:
                    fallback = fallback or default_reviewer()
                    who = fallback
                try:
                    when = datetime.datetime.fromisoformat(cell("time")) if cell("time") else stamp
                    out.append((line, sid, Verdict(sample_id=sid, verdict=kind, reviewer=who, time=when,
                                                   note=cell("note") or None)))
                except ValueError as exc:
                    errors.append(f"line {line}: {exc}")
    except OSError as exc:
        raise ReviewError(f"cannot read {path}: {exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise ReviewError(f"{path} is not a UTF-8 CSV file: {exc}") from exc
    if errors:
        raise ReviewError(f"{path}: " + "; ".join(errors))
    if not out:
        raise ReviewError(f"{path}: no verdicts in the file")
    return out


def import_csv(store: TableStore, path: str | Path, reviewer: str | None = None,
               time: datetime.datetime | None = None) -> list[Verdict]:
    """Record the verdicts of a CSV file (see `read_csv`); all or nothing.

    Returns:
        The verdicts appended to the log (ids resolved to full sample ids), in file order.

    Raises:
        ReviewError: a bad file or row, or an unknown/ambiguous id (the message names the lines); nothing is written.
    """
    rows = read_csv(path, reviewer, time)
    known = _known_or_fail(store)
    verdicts, errors = [], []
    for line, raw, verdict in rows:
        try:
            (sid,) = resolve_ids([raw], known)
        except ReviewError as exc:
            errors.append(f"line {line}: {exc}")
            continue
        verdicts.append(Verdict(sample_id=sid, verdict=verdict.verdict, reviewer=verdict.reviewer,
                                time=verdict.time, note=verdict.note))
    if errors:
        raise ReviewError(f"{path}: " + "; ".join(errors))
    append(store, verdicts)
    return verdicts


# ------------------------------------------------------------------------------------------------------- listing


def review_rows(store: TableStore, status: str = "all") -> list[dict[str, Any]]:
    """Candidates and reviewed samples with their current status, as of the log now.

    The candidates of the last materialization come first (in table order), then samples that have a verdict but
    are not candidates (rejected and already removed, or accepted and not yet added): `in_candidates` tells which.

    Args:
        store: the storage root.
        status: 'pending', 'accepted', 'rejected' or 'all'.

    Returns:
        One dict per sample: sample_id, status, reason, reasons, score, cluster, caption, source_uri, reviewer,
        reviewed_at (ISO UTC), note, in_candidates.

    Raises:
        ReviewError: an unknown status, or no candidates and no verdicts under the storage root.
    """
    if status not in (*STATUSES, "all"):
        raise ReviewError(f"status must be one of {', '.join(STATUSES)} or all, got {status!r}")
    candidates = store.read_table(store.dir(CANDIDATES)).to_pylist()
    verdicts = latest(store)
    if not candidates and not verdicts:
        raise ReviewError(f"no midtraining candidates under {store.root}: materialize midtraining_candidates first "
                          f"(curate run --select midtraining_candidates --storage {store.root})")
    rows = []
    seen = set()
    for c in candidates:
        seen.add(c["sample_id"])
        rows.append(_row(c["sample_id"], c, verdicts.get(c["sample_id"]), True))
    for sid, v in verdicts.items():
        if sid not in seen:
            rows.append(_row(sid, {}, v, False))
    return [r for r in rows if status == "all" or r["status"] == status]


def _row(sid: str, c: dict[str, Any], v: Verdict | None, in_candidates: bool) -> dict[str, Any]:
    return {"sample_id": sid, "status": _STATUS_OF[v.verdict if v else None], "reason": c.get("reason"),
            "reasons": c.get("reasons") or [], "score": c.get("score"), "cluster": c.get("cluster"),
            "caption": c.get("caption"), "source_uri": c.get("source_uri"),
            "reviewer": v.reviewer if v else None,
            "reviewed_at": v.time.astimezone(datetime.UTC).isoformat() if v else None,
            "note": v.note if v else None, "in_candidates": in_candidates}


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A plain-text table of `review_rows` (ids cut to 16 characters: any unique prefix works as an id)."""
    header = (f"{'sample_id':<16}  {'status':<8}  {'reason':<24}  {'score':>6}  {'cluster':>7}  {'reviewer':<12}  "
              "caption")
    lines = [header]
    for r in rows:
        reason = (r["reason"] or "-") if r["in_candidates"] else "(not a candidate)"
        score = f"{r['score']:.3f}" if r["score"] is not None else "-"
        cluster = str(r["cluster"]) if r["cluster"] is not None else "-"
        caption = (r["caption"] or "").replace("\n", " ")
        lines.append(f"{r['sample_id'][:16]:<16}  {r['status']:<8}  {reason[:24]:<24}  {score:>6}  {cluster:>7}  "
                     f"{(r['reviewer'] or '-')[:12]:<12}  {caption[:60]}")
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    lines.append(f"{len(rows)} rows: " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return "\n".join(lines)
