"""Creators from metadata, their style prototypes, and attribution of an image's style to them.

Creators come from, in this order of trust: the sidecar fields `artist`, `creator`, `author`, `credit` (what the
data provider states), IPTC By-line, XMP `dc:creator`, EXIF Artist. A sample's creator is the first one found; names
are normalised (Unicode NFKC, case-folded, whitespace collapsed, "©"/"(c)"/"copyright"/"by"/"photo by" prefixes and
a trailing year removed) so "© 2021 Jane Doe" and "jane  doe" are one creator.

Each creator gets up to `max_prototypes` style prototypes (spherical k-means of its images' style descriptors, one
prototype per `images_per_prototype` images): a creator who works in several styles is not averaged into none.

Attribution of a query descriptor q:
- s_c = max over c's prototypes of cos(q, prototype), for every creator; the `top` most similar compete.
- unattributed u = sigmoid((tau - s_max) / t_u): the probability that q's style is in no indexed creator's work.
- the top creators share 1 - u by softmax(s_c / t).
so shares and `unattributed` sum to 1 exactly. tau, t_u and t are calibrated at build time by leave-one-out over the
creator-labelled images (`calibrate`): a 1-D logistic regression of "style in the index" on s_max separates each
image's s_max against an index whose prototypes were rebuilt without that image (positives) from its s_max against an
index without its whole creator (negatives, the unseen-style case); t maximises the leave-one-out likelihood of the
true creator. An image in a style no creator has thus gets u > 0.5 when its s_max is below tau.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import unicodedata
import zipfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from curation.rebalance import hierarchical_kmeans
from curation.style.descriptor import l2_rows

CREATOR_INDEX_FORMAT = "atelier-creator-index-1"
SIDECAR_KEYS = ("artist", "creator", "author", "credit")
_PREFIX = re.compile(r"^(?:©|\(c\)|copyright\b|photo(?:graph)?\s+by\b|image\s+by\b|by\b)[\s:,.-]*", re.I)
_YEAR = re.compile(r"^(?:\d{4}(?:\s*[-–]\s*\d{4})?)[\s,.-]+|[\s,.-]+\d{4}(?:\s*[-–]\s*\d{4})?$")
_XMP_CREATOR = re.compile(r"<dc:creator\b[^>]*>(.*?)</dc:creator>", re.S | re.I)
_XMP_LI = re.compile(r"<rdf:li\b[^>]*>(.*?)</rdf:li>", re.S | re.I)
_XMP_ATTR = re.compile(r"\bdc:creator\s*=\s*\"([^\"]*)\"", re.I)


def normalise_creator(name: str) -> str:
    """The comparison key of a creator name ('' when nothing is left)."""
    text = unicodedata.normalize("NFKC", name).strip()
    for _ in range(3):  # "© 2021 by Jane" peels in several steps
        before = text
        text = _YEAR.sub("", _PREFIX.sub("", text)).strip()
        if text == before:
            break
    return " ".join(text.casefold().split()).strip(" ,.;:-")


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [v for v in re.split(r"[;|]", value) if v.strip()]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):  # {"name": ...} records of some sidecars
        return _strings(value.get("name"))
    return []


def _xmp_creators(xmp: str) -> list[str]:
    found = []
    for block in _XMP_CREATOR.findall(xmp):
        items = _XMP_LI.findall(block)
        found += items if items else [block]
    found += _XMP_ATTR.findall(xmp)
    return [re.sub(r"<[^>]+>", "", f) for f in found]


def creator_candidates(metadata: dict[str, Any]) -> list[tuple[str, str]]:
    """(field, raw name) of every creator statement in ingest's metadata JSON (`{"embedded": ..., "sidecar": ...}`),
    most trusted first."""
    sidecar = {str(k).lower(): v for k, v in (metadata.get("sidecar") or {}).items()}
    embedded = metadata.get("embedded") or {}
    out = [(f"sidecar.{k}", s) for k in SIDECAR_KEYS for s in _strings(sidecar.get(k))]
    iptc = embedded.get("iptc") or {}
    out += [("iptc.By-line", s) for s in _strings(iptc.get("By-line"))]
    xmp = embedded.get("xmp")
    if isinstance(xmp, str):
        out += [("xmp.dc:creator", s) for s in _xmp_creators(xmp)]
    out += [("exif.Artist", s) for s in _strings((embedded.get("exif") or {}).get("Artist"))]
    return [(f, s.strip()) for f, s in out if normalise_creator(s)]


def creator_of(metadata: dict[str, Any] | str) -> tuple[str, str, str] | None:
    """(key, display name, field) of a sample's creator, or None when its metadata names none."""
    meta = json.loads(metadata) if isinstance(metadata, str) else metadata
    found = creator_candidates(meta or {})
    if not found:
        return None
    where, name = found[0]
    return normalise_creator(name), " ".join(name.split()), where


@dataclass(frozen=True)
class CreatorIndexConfig:
    """How prototypes are built and attribution is calibrated."""

    max_prototypes: int = 4
    """Style prototypes per creator, at most."""
    images_per_prototype: int = 8
    """One more prototype per this many images (up to `max_prototypes`)."""
    min_images: int = 1
    """Creators with fewer curated images are not indexed."""
    calibration_samples: int = 2000
    """Leave-one-out calibration uses at most this many labelled images (a seeded sample)."""
    seed: int = 0
    """Seed of the prototype k-means and of the calibration sample."""


@dataclass
class Calibration:
    """The attribution parameters and how they were obtained."""

    tau: float
    t_unattributed: float
    t_creators: float
    method: str
    positives: int = 0
    negatives: int = 0
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CreatorEntry:
    """One indexed creator."""

    key: str
    name: str
    sample_ids: list[str]
    prototypes: np.ndarray
    members: str = ""
    """Hash of the sorted sample ids: an unchanged entry is reused by the next build."""


def _members(sample_ids: Iterable[str]) -> str:
    return hashlib.sha256("\n".join(sorted(sample_ids)).encode()).hexdigest()[:16]


def prototypes(vectors: np.ndarray, config: CreatorIndexConfig) -> np.ndarray:
    """L2-normalised style prototypes of one creator's images."""
    n = len(vectors)
    k = max(1, min(config.max_prototypes, -(-n // config.images_per_prototype)))
    if k == 1:
        return l2_rows(vectors.mean(axis=0, keepdims=True))
    labels, _ = hierarchical_kmeans(vectors, 1, (k,), seed=config.seed, niter=10)
    return l2_rows(np.stack([vectors[labels[:, 0] == j].mean(axis=0) for j in np.unique(labels[:, 0])]))


class CreatorIndex:
    """Creators, their prototypes and the calibrated attribution."""

    def __init__(self, entries: list[CreatorEntry], calibration: Calibration, descriptor: str,
                 config: CreatorIndexConfig) -> None:
        self.entries = sorted(entries, key=lambda e: e.key)
        self.calibration = calibration
        self.descriptor = descriptor
        self.config = config
        self._owner = np.concatenate([np.full(len(e.prototypes), i) for i, e in enumerate(self.entries)]) \
            if self.entries else np.zeros(0, np.int64)
        self._protos = np.concatenate([e.prototypes for e in self.entries]).astype(np.float32) \
            if self.entries else np.zeros((0, 0), np.float32)

    def similarities(self, queries: np.ndarray) -> np.ndarray:
        """[n, creators]: each query's best cosine with each creator's prototypes."""
        queries = np.asarray(queries, np.float32)
        out = np.full((len(queries), len(self.entries)), -1.0, np.float32)
        if not self.entries:
            return out
        sims = queries @ self._protos.T
        for j in range(len(self.entries)):
            out[:, j] = sims[:, self._owner == j].max(axis=1)
        return out

    def attribute(self, queries: np.ndarray, top: int = 5) -> list[dict[str, Any]]:
        """Per query: {"creators": [{"creator", "share", "similarity"}], "unattributed"}, shares + unattributed = 1."""
        sims = self.similarities(queries)
        return [_shares(row, [e.name for e in self.entries], self.calibration, top) for row in sims]

    def version(self) -> str:
        """A content hash of everything attribution depends on (equal versions give equal shares)."""
        digest = hashlib.sha256(json.dumps({"descriptor": self.descriptor, "calibration": asdict(self.calibration),
                                            "entries": [(e.key, e.name) for e in self.entries]},
                                           sort_keys=True).encode())
        digest.update(np.ascontiguousarray(self._protos).tobytes())
        return digest.hexdigest()[:16]

    def to_bytes(self) -> bytes:
        """The index as one `.npz` blob (header JSON + the prototype matrix)."""
        header = {"format": CREATOR_INDEX_FORMAT, "descriptor": self.descriptor, "config": asdict(self.config),
                  "calibration": asdict(self.calibration), "version": self.version(),
                  "entries": [{"key": e.key, "name": e.name, "sample_ids": e.sample_ids, "members": e.members,
                               "prototypes": len(e.prototypes)} for e in self.entries]}
        out = io.BytesIO()
        np.savez(out, header=np.frombuffer(json.dumps(header).encode(), np.uint8), prototypes=self._protos)
        return out.getvalue()

    @classmethod
    def from_bytes(cls, blob: bytes) -> CreatorIndex:
        """Load what `to_bytes` wrote; raises ValueError for another format or a damaged blob."""
        try:
            with np.load(io.BytesIO(blob)) as data:
                header = json.loads(data["header"].tobytes())
                protos = data["prototypes"]
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            raise ValueError(f"creator index unreadable: {exc}") from exc
        if header.get("format") != CREATOR_INDEX_FORMAT:
            raise ValueError(f"creator index format {header.get('format')!r}, expected {CREATOR_INDEX_FORMAT!r}")
        entries, row = [], 0
        for e in header["entries"]:
            entries.append(CreatorEntry(e["key"], e["name"], e["sample_ids"], protos[row:row + e["prototypes"]],
                                        e["members"]))
            row += e["prototypes"]
        index = cls(entries, Calibration(**header["calibration"]), header["descriptor"],
                    CreatorIndexConfig(**header["config"]))
        if index.version() != header["version"]:
            raise ValueError("creator index damaged: its content does not match its version")
        return index


def _shares(sims: np.ndarray, names: list[str], cal: Calibration, top: int) -> dict[str, Any]:
    if len(sims) == 0:
        return {"creators": [], "unattributed": 1.0}
    order = np.lexsort((np.array(names), -sims))[:max(1, top)]  # ties broken by name: deterministic
    s_max = float(sims[order[0]])
    u = float(1.0 / (1.0 + np.exp(-(cal.tau - s_max) / cal.t_unattributed)))
    logits = sims[order].astype(np.float64) / cal.t_creators
    weights = np.exp(logits - logits.max())
    shares = (1.0 - u) * weights / weights.sum()
    creators = [{"creator": names[j], "share": round(float(s), 6), "similarity": round(float(sims[j]), 6)}
                for j, s in zip(order, shares, strict=True)]
    unattributed = round(1.0 - sum(c["share"] for c in creators), 6)  # exact sum after rounding
    return {"creators": creators, "unattributed": unattributed}


def _logistic(x: np.ndarray, y: np.ndarray, ridge: float = 1e-3, iters: int = 50) -> tuple[float, float]:
    """(a, b) of P(y=1) = sigmoid(a x + b) by Newton's method, with a small ridge on `a` (separable data)."""
    a, b = 0.0, 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(a * x + b)))
        w = np.maximum(p * (1 - p), 1e-9)
        grad = np.array([((p - y) * x).sum() + ridge * a, (p - y).sum()])
        hess = np.array([[(w * x * x).sum() + ridge, (w * x).sum()], [(w * x).sum(), w.sum()]])
        step = np.linalg.solve(hess, grad)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    return float(a), float(b)


def calibrate(entries: list[CreatorEntry], vectors: dict[str, np.ndarray], config: CreatorIndexConfig,
              descriptor: str) -> Calibration:
    """tau, t_u and t by leave-one-out over the labelled images (see the module docstring)."""
    entries = sorted(entries, key=lambda e: e.key)  # the order `CreatorIndex` uses
    rng = np.random.default_rng(config.seed)
    pool = [(j, sid) for j, e in enumerate(entries) for sid in e.sample_ids]
    if len(pool) > config.calibration_samples:
        pool = [pool[i] for i in sorted(rng.choice(len(pool), config.calibration_samples, replace=False))]
    full = CreatorIndex(entries, Calibration(1.0, 1.0, 1.0, "none"), descriptor, config)
    pos, neg, true_sims, true_rows = [], [], [], []
    for j, sid in pool:
        q = vectors[sid][None, :]
        sims = full.similarities(q)[0]
        others = np.delete(sims, j)
        if len(others):
            neg.append(float(others.max()))  # the index without this creator: its style is unseen
        rest = [s for s in entries[j].sample_ids if s != sid]
        if not rest:
            continue
        own = float((prototypes(np.stack([vectors[s] for s in rest]), config) @ q[0]).max())
        loo = sims.copy()
        loo[j] = own
        pos.append(float(loo.max()))
        true_sims.append(loo)
        true_rows.append(j)
    if len(pos) < 2 or len(neg) < 2:
        # nothing to separate: attribute nothing until labelled creators of two kinds exist
        return Calibration(tau=1.0, t_unattributed=0.02, t_creators=0.05, method="default (too few labels)",
                           positives=len(pos), negatives=len(neg))
    x = np.array(pos + neg)
    y = np.array([1.0] * len(pos) + [0.0] * len(neg))
    a, b = _logistic(x, y)
    if a <= 0:  # s_max does not separate seen from unseen styles: never attribute with confidence
        tau, t_u = float(np.max(x)), 0.02
    else:
        tau, t_u = -b / a, 1.0 / a
    sims_m, rows = np.stack(true_sims), np.array(true_rows)
    best_t, best_ll = 0.05, -np.inf
    for t in (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5):
        logits = sims_m / t
        logits -= logits.max(axis=1, keepdims=True)
        ll = float((logits[np.arange(len(rows)), rows] - np.log(np.exp(logits).sum(axis=1))).mean())
        if ll > best_ll:
            best_t, best_ll = t, ll
    top1 = float((sims_m.argmax(axis=1) == rows).mean())
    return Calibration(tau=round(tau, 6), t_unattributed=round(t_u, 6), t_creators=best_t,
                       method="leave-one-out logistic fit of s_max (seen vs held-out creator); t by LOO likelihood",
                       positives=len(pos), negatives=len(neg),
                       metrics={"loo_top1": round(top1, 4), "loo_log_likelihood": round(best_ll, 4),
                                "pos_mean": round(float(np.mean(pos)), 4), "neg_mean": round(float(np.mean(neg)), 4)})


def build_creator_index(creators: dict[str, tuple[str, str]], vectors: dict[str, np.ndarray], descriptor: str,
                        config: CreatorIndexConfig = CreatorIndexConfig(), excluded: set[str] = frozenset(),
                        previous: CreatorIndex | None = None) -> tuple[CreatorIndex, dict[str, int]]:
    """Build (or update) the index.

    Args:
        creators: {sample_id: (creator key, display name)} of the eligible labelled samples.
        vectors: {sample_id: style descriptor} (at least those of `creators`).
        descriptor: the style descriptor's name (an index only answers queries of the same descriptor).
        config: prototype and calibration settings.
        excluded: creator keys never indexed (opt-outs).
        previous: the last build; creators whose sample set is unchanged keep their prototypes.

    Returns:
        (index, counts): counts of creators indexed, reused, excluded, below `min_images`.
    """
    if previous is not None and (previous.descriptor != descriptor or previous.config != config):
        previous = None
    by_key: dict[str, list[str]] = {}
    display: dict[str, str] = {}
    for sid in sorted(creators):
        key, name = creators[sid]
        by_key.setdefault(key, []).append(sid)
        display.setdefault(key, name)
    old = {e.key: e for e in previous.entries} if previous else {}
    entries, counts = [], {"indexed": 0, "reused": 0, "excluded": 0, "below_min_images": 0}
    for key in sorted(by_key):
        sids = by_key[key]
        if key in excluded:
            counts["excluded"] += 1
            continue
        if len(sids) < config.min_images:
            counts["below_min_images"] += 1
            continue
        members = _members(sids)
        if key in old and old[key].members == members:
            entries.append(old[key])
            counts["reused"] += 1
        else:
            entries.append(CreatorEntry(key, display[key], sids, prototypes(np.stack([vectors[s] for s in sids]),
                                                                            config), members))
        counts["indexed"] += 1
    calibration = calibrate(entries, vectors, config, descriptor)
    return CreatorIndex(entries, calibration, descriptor, config), counts
