"""Opt-out list: creators and rights holders who asked that their images not be trained on.

An entry names a `sample_id`, a source URL (exact), a domain (the host and its subdomains) or an artist (compared
case-insensitively with the artist/creator/author fields of the embedded metadata and the sidecar). The list is a CSV
(`kind,value,reason,added_by,added_at`) so a rights team can edit it by hand; `curate opt-out add` appends to it.
Ingest honours it for new inputs, and `rebalanced_images` and `training_shards` re-apply the current list on every
run, so a request made after an image was curated removes it from the shards at the next re-curation.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

KINDS = ("sample_id", "url", "domain", "artist")
FIELDS = ("kind", "value", "reason", "added_by", "added_at")
_ARTIST_KEYS = {"artist", "creator", "author", "by-line", "byline", "dc:creator", "photographer", "copyright_owner"}
_URL_KEYS = {"url", "source_url", "page_url", "src", "link"}
_URL = re.compile(r"https?://[^\s\"'<>]+", re.I)


@dataclass(frozen=True)
class OptOut:
    """One request."""

    kind: str
    """`sample_id`, `url`, `domain` or `artist`."""
    value: str
    """What to match (normalised: lower-case ids, domains and artists)."""
    reason: str = ""
    """Why (ticket, request id); copied into the decision."""
    added_by: str = ""
    """Who recorded the request."""
    added_at: str = ""
    """When (ISO 8601, UTC)."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"opt-out kind {self.kind!r} is not one of {KINDS}")
        if not self.value.strip():
            raise ValueError("an opt-out needs a value")


def normalise(kind: str, value: str) -> str:
    value = value.strip()
    if kind == "domain":
        host = urlsplit(value).hostname if "://" in value else value
        return (host or value).lower().lstrip(".").removeprefix("www.")
    if kind in ("sample_id", "artist"):
        return " ".join(value.lower().split())
    return value


def make(kind: str, value: str, reason: str = "", added_by: str = "") -> OptOut:
    """A new request stamped with the current time."""
    return OptOut(kind, normalise(kind, value), reason, added_by, datetime.now(UTC).isoformat(timespec="seconds"))


class OptOutList:
    """The requests, indexed for matching."""

    def __init__(self, entries: list[OptOut] | None = None) -> None:
        self.entries = list(entries or [])
        self._by_kind: dict[str, dict[str, OptOut]] = {k: {} for k in KINDS}
        for e in self.entries:
            self._by_kind[e.kind].setdefault(normalise(e.kind, e.value), e)

    def __len__(self) -> int:
        return len(self.entries)

    @classmethod
    def from_csv(cls, text: str) -> OptOutList:
        """Parse the CSV; a malformed row raises naming its line (a silently ignored opt-out is worse)."""
        reader = csv.DictReader(io.StringIO(text))
        missing = {"kind", "value"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError(f"opt-out list: missing column(s) {sorted(missing)}; expected {FIELDS}")
        entries = []
        for line, row in enumerate(reader, start=2):
            try:
                entries.append(OptOut(row["kind"].strip(), normalise(row["kind"].strip(), row["value"] or ""),
                                      row.get("reason") or "", row.get("added_by") or "", row.get("added_at") or ""))
            except (ValueError, AttributeError) as exc:
                raise ValueError(f"opt-out list line {line}: {exc}") from exc
        return cls(entries)

    def to_csv(self) -> str:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for e in self.entries:
            writer.writerow({f: getattr(e, f) for f in FIELDS})
        return out.getvalue()

    def fingerprint(self) -> str:
        import hashlib

        keys = sorted(f"{e.kind}\t{normalise(e.kind, e.value)}" for e in self.entries)
        return hashlib.sha256("\n".join(keys).encode()).hexdigest()[:16]

    def match(self, sample_id: str | None, source_uri: str, metadata: dict[str, Any] | str | None) -> OptOut | None:
        """The first request that covers this sample, or None."""
        if not self.entries:
            return None
        if sample_id and (hit := self._by_kind["sample_id"].get(sample_id.lower())):
            return hit
        meta = json.loads(metadata) if isinstance(metadata, str) else (metadata or {})
        urls = [source_uri, *_urls(meta)]
        for url in urls:
            if hit := self._by_kind["url"].get(url):
                return hit
        domains = self._by_kind["domain"]
        if domains:
            for url in urls:
                host = (urlsplit(url).hostname or "").lower().removeprefix("www.") if "://" in url else ""
                while host:
                    if hit := domains.get(host):
                        return hit
                    host = host.partition(".")[2]
        artists = self._by_kind["artist"]
        if artists:
            for name in _artists(meta):
                if hit := artists.get(normalise("artist", name)):
                    return hit
        return None


def _walk(obj: Any, keys: set[str]):
    """Values of the given keys (case-insensitive, at any depth) in a metadata tree."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if str(k).lower().split(":")[-1] in keys or str(k).lower() in keys:
                yield from (v if isinstance(v, list) else [v])
            yield from _walk(v, keys)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk(v, keys)


def _urls(meta: dict[str, Any]) -> list[str]:
    found = []
    for value in _walk(meta, _URL_KEYS):
        if isinstance(value, str):
            found.extend(_URL.findall(value) or ([value] if "://" in value else []))
    return found


def _artists(meta: dict[str, Any]) -> list[str]:
    return [v for v in _walk(meta, _ARTIST_KEYS) if isinstance(v, str) and v.strip()]


def opt_out_decision(sample_id: str | None, source_uri: str, request: OptOut):
    """The ledger entry for a sample removed at a creator's request."""
    from curation.decisions import Decision

    return Decision(sample_id, source_uri, "opt_out", "drop", "opted_out",
                    details={"kind": request.kind, "value": request.value, "request": request.reason,
                             "added_by": request.added_by, "added_at": request.added_at})
