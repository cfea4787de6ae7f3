"""Style-reference training pairs: 1..k reference images that share a style with a target but not its content.

A style-reference model (one or more reference images, a strength per reference, mixing between them) learns from
targets whose references share their style and not their content. Three kinds:
- `same_creator`: references by the target's creator (metadata), most style-similar first;
- `same_style_cluster`: the target's nearest style neighbours within its style cluster (k-means on style vectors);
- `mix`: two references from two different style clusters, and as target the sample whose style is nearest the
  blend (the normalised mean of the two references).
Every reference must have content similarity with the target below `max_content_similarity` (the content embedding of
`image_features`), else it is skipped: a near-duplicate would teach copying, not style. Pairs are balanced over
style clusters: each cluster with a usable target gets the same budget of target slots (a dominant style does not
dominate the pairs). The strength label is the style similarity calibrated to [0, 1] by the empirical distribution
of style similarity between random pairs of different content: strength 0.9 means "more alike in style than 90% of
random pairs". `style_cluster` is the cluster whose budget a pair used (the target's for `same_*`, the first
reference's for `mix`). Deterministic for the same inputs and seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from curation.rebalance import hierarchical_kmeans
from curation.style.descriptor import l2_rows

PAIRS_CODE_VERSION = "style-pairs-1"
KINDS = ("same_creator", "same_style_cluster", "mix")


@dataclass(frozen=True)
class PairsConfig:
    """How pairs are drawn."""

    clusters: int | None = None
    """Style clusters (None: about sqrt(n / 2), at least 1)."""
    max_references: int = 3
    """References per pair: 1..this many (same_creator / same_style_cluster); mix pairs have 2."""
    max_content_similarity: float = 0.8
    """A reference whose content cosine with the target reaches this is skipped."""
    targets_per_cluster: int = 8
    """Target slots per style cluster (each slot tries same_creator, same_style_cluster and mix in turn)."""
    candidates: int = 32
    """Style neighbours considered per target."""
    calibration_pairs: int = 20000
    """Random pairs whose style similarities calibrate the strength."""
    seed: int = 0
    """Seed of the clustering, the target order and the reference counts."""


@dataclass
class PairSet:
    """The pairs, each sample's style cluster and the strength calibration."""

    pairs: list[dict[str, Any]]
    clusters: np.ndarray
    strength_quantiles: np.ndarray
    counts: dict[str, int]


def default_clusters(n: int) -> int:
    """About sqrt(n / 2) style clusters."""
    return max(1, int(round(np.sqrt(n / 2))))


def strength_calibration(style: np.ndarray, content: np.ndarray, config: PairsConfig,
                         rng: np.random.Generator) -> np.ndarray:
    """101 quantiles (0%..100%) of style similarity over random pairs of different content."""
    n = len(style)
    if n < 2:
        return np.linspace(-1.0, 1.0, 101)
    a = rng.integers(n, size=config.calibration_pairs)
    b = (a + rng.integers(1, n, size=config.calibration_pairs)) % n
    sims = np.einsum("ij,ij->i", style[a], style[b])
    distinct = np.einsum("ij,ij->i", content[a], content[b]) < config.max_content_similarity
    sims = sims[distinct] if distinct.any() else sims
    return np.quantile(sims, np.linspace(0, 1, 101))


def strength(similarity: float, quantiles: np.ndarray) -> float:
    """Style similarity -> [0, 1]: the interpolated fraction of random pairs that are less alike."""
    return float(np.interp(similarity, quantiles, np.linspace(0, 1, len(quantiles))))


def pair_id(kind: str, references: list[str], target: str) -> str:
    """A stable id of one pair."""
    return hashlib.sha256(f"{kind}|{','.join(references)}|{target}".encode()).hexdigest()[:24]


def build_pairs(sample_ids: list[str], style: np.ndarray, content: np.ndarray, creators: dict[str, str],
                config: PairsConfig = PairsConfig()) -> PairSet:
    """Draw the pairs.

    Args:
        sample_ids: the eligible samples (curated, not opted out), any order (sorted here).
        style: [n, d] L2-normalised style descriptors, rows in `sample_ids` order.
        content: [n, e] L2-normalised content embeddings, same rows.
        creators: {sample_id: creator key} of the samples whose metadata names one.
        config: see `PairsConfig`.
    """
    order = np.argsort(np.array(sample_ids), kind="stable")
    ids = [sample_ids[i] for i in order]
    style = l2_rows(np.asarray(style, np.float32)[order])
    content = l2_rows(np.asarray(content, np.float32)[order])
    n = len(ids)
    rng = np.random.default_rng(config.seed)
    counts = {k: 0 for k in KINDS} | {"skipped_no_reference": 0, "references_too_close_in_content": 0}
    if n < 2:
        return PairSet([], np.zeros(n, np.int64), strength_calibration(style, content, config, rng), counts)
    k = max(1, min(config.clusters or default_clusters(n), n))
    labels, _ = hierarchical_kmeans(style, 1, (k,), seed=config.seed)
    cluster = labels[:, 0]
    quantiles = strength_calibration(style, content, config, rng)
    by_creator: dict[str, list[int]] = {}
    for i, sid in enumerate(ids):
        if sid in creators:
            by_creator.setdefault(creators[sid], []).append(i)
    members = {c: np.flatnonzero(cluster == c) for c in np.unique(cluster)}
    pairs: list[dict[str, Any]] = []

    def usable(target: int, cands: np.ndarray) -> list[int]:
        if len(cands) == 0:
            return []
        ok = content[cands] @ content[target] < config.max_content_similarity
        counts["references_too_close_in_content"] += int((~ok).sum())
        return [int(c) for c in cands[ok]]

    def emit(kind: str, refs: list[int], target: int, slot: int, blend: np.ndarray | None = None,
             creator: str | None = None):
        ref_style = style[refs] @ style[target]
        sim = float(blend @ style[target]) if blend is not None else float(ref_style.mean())
        pairs.append({
            "pair_id": pair_id(kind, [ids[r] for r in refs], ids[target]), "kind": kind,
            "reference_ids": [ids[r] for r in refs], "target_id": ids[target],
            "style_similarity": round(sim, 6),
            "reference_style_similarity": [round(float(s), 6) for s in ref_style],
            "content_similarity": round(float((content[refs] @ content[target]).max()), 6),
            "strength": round(strength(sim, quantiles), 6),
            "reference_strengths": [round(strength(float(s), quantiles), 6) for s in ref_style],
            "style_cluster": slot, "target_cluster": int(cluster[target]),
            "reference_clusters": [int(cluster[r]) for r in refs],
            "creator": creator})
        counts[kind] += 1

    for c in sorted(members):
        group = members[c]
        targets = group[rng.permutation(len(group))]
        slots = 0
        for t in targets:
            if slots >= config.targets_per_cluster:
                break
            made = False
            want = int(rng.integers(1, config.max_references + 1))
            creator = creators.get(ids[t])
            if creator is not None:
                same = np.array([i for i in by_creator[creator] if i != t], np.int64)
                if len(same):
                    same = same[np.argsort(-(style[same] @ style[t]), kind="stable")][:config.candidates]
                    refs = usable(int(t), same)[:want]
                    if refs:
                        emit("same_creator", refs, int(t), int(c), creator=creator)
                        made = True
            near = group[group != t]
            if len(near):
                near = near[np.argsort(-(style[near] @ style[t]), kind="stable")][:config.candidates]
                refs = usable(int(t), near)[:want]
                if refs:
                    emit("same_style_cluster", refs, int(t), int(c))
                    made = True
            if len(members) > 1 and _mix(int(t), c, members, cluster, style, content, config, rng, emit):
                made = True
            slots += made
            counts["skipped_no_reference"] += not made
    return PairSet(pairs, cluster, quantiles, counts)


def _mix(anchor: int, c: int, members: dict, cluster: np.ndarray, style: np.ndarray, content: np.ndarray,
         config: PairsConfig, rng: np.random.Generator, emit) -> bool:
    """One mix pair: `anchor` and a sample of another cluster as references, the target nearest their blend."""
    others = [o for o in sorted(members) if o != c]
    other = members[others[int(rng.integers(len(others)))]]
    partner = int(other[int(rng.integers(len(other)))])
    blend = l2_rows((style[anchor] + style[partner])[None, :])[0]
    cands = np.argsort(-(style @ blend), kind="stable")
    for t in cands[:config.candidates]:
        t = int(t)
        if t in (anchor, partner):
            continue
        if max(float(content[anchor] @ content[t]), float(content[partner] @ content[t])) < \
                config.max_content_similarity:
            emit("mix", [anchor, partner], t, c, blend=blend)
            return True
    return False
