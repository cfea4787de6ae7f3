"""Rebalancing dev sets: one head concept holding about half of the corpus, next to a long tail, at any size.

Shared by `tests/curation/test_rebalance_defaults.py` and `bench/rebalance_defaults.py` so the unit test and the
BENCHMARKS figures measure the same thing.

Concepts: the head concept is on `head_share` of the samples; the others draw one tail concept from a Zipf law
(exponent `zipf`) over `n_tail` concepts, a second one with probability 0.2, and no concept at all with probability
`no_concept`. Embeddings: the head samples form one mass around a direction (spread `head_spread`; a real "stock photo"
class is a region, not a point), each tail concept its own looser group. `few_concepts=True` is the issue's case:
besides the head only five tail concepts exist, so a quantile of the per-concept counts is the head's own count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

HEAD = "stock photo"


@dataclass
class DevSet:
    sample_ids: list[str]
    embeddings: np.ndarray  # float16, unit rows
    concepts: list[list[str]]
    head: np.ndarray  # bool: the sample matches the head concept
    tail_counts: dict[str, int]  # samples per tail concept


def dev_set(n: int, head_share: float = 0.5, n_tail: int | None = None, zipf: float = 1.1, no_concept: float = 0.3,
            few_concepts: bool = False, head_spread: float = 0.35, dim: int = 64, seed: int = 0) -> DevSet:
    rng = np.random.default_rng(seed)
    n_head = int(round(head_share * n))
    n_tail = 5 if few_concepts else (n_tail or max(20, n // 15))
    weights = 1.0 / np.arange(1, n_tail + 1) ** zipf
    weights /= weights.sum()
    directions = rng.normal(size=(n_tail + 1, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    concepts: list[list[str]] = []
    emb = np.empty((n, dim), np.float64)
    head = np.zeros(n, bool)
    head[:n_head] = True
    for i in range(n):
        if head[i]:
            concepts.append([HEAD])
            emb[i] = directions[0] + head_spread * rng.normal(size=dim) / np.sqrt(dim)
            continue
        k = int(rng.choice(n_tail, p=weights))
        emb[i] = directions[k + 1] + 0.6 * rng.normal(size=dim) / np.sqrt(dim)
        if rng.random() < no_concept:
            concepts.append([])
            continue
        mine = [f"tail {k}"]
        if rng.random() < 0.2:
            mine.append(f"tail {int(rng.choice(n_tail, p=weights))}")
        concepts.append(list(dict.fromkeys(mine)))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"{v:064x}" for v in rng.permutation(n)]
    tail_counts: dict[str, int] = {}
    for c in concepts:
        for name in c:
            if name != HEAD:
                tail_counts[name] = tail_counts.get(name, 0) + 1
    return DevSet(ids, emb.astype(np.float16), concepts, head, tail_counts)


def rare_mask(ds: DevSet, max_share: float = 0.01) -> np.ndarray:
    """Samples whose every concept is rare (held by at most `max_share` of the corpus, and at least one concept)."""
    limit = max_share * len(ds.sample_ids)
    return np.array([bool(c) and HEAD not in c and all(ds.tail_counts[x] <= max(limit, 1) for x in c)
                     for c in ds.concepts])


@dataclass
class MixedDevSet(DevSet):
    mass: np.ndarray  # bool: the sample lies in the dense embedding mass (the dominant cluster)
    rare_in_mass: np.ndarray  # bool: a mass sample that carries a rare concept


def mixed_dev_set(n: int, mass_share: float = 0.5, head_share: float = 0.5, rare_in_mass: float = 0.2,
                  no_concept: float = 0.3, spread: float = 0.35, dim: int = 64, seed: int = 0) -> MixedDevSet:
    """One concept on about `head_share` of the samples AND one dense embedding mass on `mass_share`, overlapping.

    The issue-14 end-to-end case at any size: a title planted over varied photos (the head concept, half of it inside
    the mass and half spread over the tail directions) while the embeddings have one dominant region, inside which
    `rare_in_mass` of the samples carry rare concepts (about 0.1% of the corpus each, one sample each at n < 1000;
    one in five of them also carries the head concept) and `no_concept` carry none. Outside the mass: Zipf(1.1) tail
    concepts over n/15 loose groups, as in `dev_set`, with the rest of the head concept spread across them.
    """
    rng = np.random.default_rng(seed)
    n_mass = int(round(mass_share * n))
    n_tail = max(20, n // 15)
    weights = 1.0 / np.arange(1, n_tail + 1) ** 1.1
    weights /= weights.sum()
    directions = rng.normal(size=(n_tail + 1, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    per_rare = max(1, round(0.001 * n))
    n_rare_members = int(round(rare_in_mass * n_mass))
    rare_names = [f"rare {j}" for j in range(max(1, -(-n_rare_members // per_rare)))]
    head_outside = (head_share * n - 0.5 * n_mass) / max(1, n - n_mass)  # share of outside samples with the head
    roles = rng.permutation(np.concatenate([np.zeros(n_rare_members), np.ones(int(round(no_concept * n_mass))),
                                            np.full(n_mass, 2)])[:n_mass])  # 0 rare, 1 none, 2 head
    concepts: list[list[str]] = []
    emb = np.empty((n, dim), np.float64)
    mass = np.zeros(n, bool)
    mass[:n_mass] = True
    rare = np.zeros(n, bool)
    rare_seen = 0
    for i in range(n):
        if mass[i]:
            emb[i] = directions[0] + spread * rng.normal(size=dim) / np.sqrt(dim)
            if roles[i] == 0:
                mine = [rare_names[rare_seen // per_rare]]
                rare_seen += 1
                rare[i] = True
                if rng.random() < 0.2:
                    mine.append(HEAD)
                concepts.append(mine)
            else:
                concepts.append([] if roles[i] == 1 else [HEAD])
            continue
        k = int(rng.choice(n_tail, p=weights))
        emb[i] = directions[k + 1] + 0.6 * rng.normal(size=dim) / np.sqrt(dim)
        if rng.random() < head_outside:
            concepts.append([HEAD])
        elif rng.random() < no_concept:
            concepts.append([])
        else:
            concepts.append([f"tail {k}"])
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = [f"{v:064x}" for v in rng.permutation(n)]
    head = np.array([HEAD in c for c in concepts])
    tail_counts: dict[str, int] = {}
    for c in concepts:
        for name in c:
            if name != HEAD:
                tail_counts[name] = tail_counts.get(name, 0) + 1
    return MixedDevSet(ids, emb.astype(np.float16), concepts, head, tail_counts, mass, rare)
