"""Dedup precision on non-photographic images, and the photo set as the check that nothing got worse (issue 14).

    .venv/bin/python bench/dedup_art_eval.py [--per-kind 100] [--seed 0] [--threads 2] [--sets art,photo]

Two labelled sets go through the production feature path (`FeatureExtractor.process_batch`, so the embedding,
pHashes and verification thumbnail are the pipeline's) and then through whole-set deduplication, three ways, on
the same candidate edges (the production thresholds):

  closure     the rule before issue 14 (dedup-1): union of every candidate edge, one representative per connected
              component (scipy's connected_components here, the old union-find did the same)
  semdedup    `curation.dedup.deduplicate(verify=False)`: a row goes only as a candidate of a KEPT better row
  production  `deduplicate` with its defaults: the same, each candidate verified as the same picture first

Sets:
  art    `tests/curation/art_devset.py`: --per-kind distinct pictures of each of 6 kinds (gradient, flat colour,
         line art, pixel art, UI screenshot, poster) plus every real image of ../shared/data with a short side >= 128,
         each followed by 2 true copies (JPEG re-encode, resize, crop, flip, border, watermark, rotating)
  photo  the 37 photos of ../shared/data/corpus_dev and the 25 transforms of each from `bench/dedup_eval.py`

Measures per set and rule: distinct pictures removed (a row removed as the copy of a row of ANOTHER group, over
the number of groups), recall (rows removed as copies of their own group over group size - 1), per copy kind.
Goals (issue 14): art distinct removed <= 0.5%, art recall >= 0.90, photo figures no worse than dedup-1's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from curation.dedup import (  # noqa: E402
    DedupConfig,
    _rank,
    cosine_pairs,
    deduplicate,
    orientation_pairs,
)
from tests.curation.art_devset import Item, candidates, features, generate, outcome  # noqa: E402


@dataclass
class _Drop:
    source_uri: str
    details: dict


def closure(c, config: DedupConfig) -> tuple[np.ndarray, list[_Drop]]:
    """The dedup-1 rule on the same candidates: connected components over every edge, best-ranked row kept."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(c)
    i1, j1, _ = orientation_pairs(c.orientations, config.phash_threshold, rotated_threshold=config.rotated_threshold)
    i2, j2, _ = cosine_pairs(c.embeddings, config.semantic_threshold, exact_max=config.exact_search_max)
    ids = np.asarray(c.sample_ids)
    _, first = np.unique(ids, return_inverse=True)  # identical bytes
    i3, order = np.arange(n), np.argsort(first, kind="stable")
    j3 = order[np.searchsorted(first[order], first)]
    rows, cols = np.concatenate([i1, i2, i3]), np.concatenate([j1, j2, j3])
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    rank = np.empty(n, np.int64)
    rank[_rank(c)] = np.arange(n)
    best = {}
    for x in range(n):
        if label[x] not in best or rank[x] > rank[best[label[x]]]:
            best[label[x]] = x
    keep = np.array([best[label[x]] == x for x in range(n)])
    drops = [_Drop(c.source_uris[x], {"representative_uri": c.source_uris[best[label[x]]]}) for x in range(n)
             if not keep[x]]
    return keep, drops


def photo_items(corpus: Path, seed: int) -> list[Item]:
    """corpus_dev's photos and their 25 transforms (`bench/dedup_eval.py`), one group per photo."""
    from dedup_eval import transforms

    from curation.image_io import load_rgb

    items = []
    records = [json.loads(line) for line in (corpus / "metadata.jsonl").read_text().splitlines() if line.strip()]
    for k, rec in enumerate(records):
        data = (corpus / rec["file"]).read_bytes()
        items.append(Item(rec["file"], k, "photo", "original", data))
        for name, blob, _ in transforms(load_rgb(data), np.random.default_rng([seed, k])):
            items.append(Item(f"{rec['file']}#{name}", k, "photo", name, blob))
    return items


def evaluate(name: str, items: list[Item], threads: int) -> tuple[list[str], dict]:
    t0 = time.perf_counter()
    table = features(items, threads=threads)
    t_features = time.perf_counter() - t0
    config = DedupConfig()
    out, figures = [], {}
    for rule in ("closure", "semdedup", "production"):
        c = candidates(table)
        t0 = time.perf_counter()
        if rule == "closure":
            keep, drops = closure(c, config)
            edges = {}
        else:
            result = deduplicate(c, DedupConfig(verify=rule == "production"))
            keep, drops, edges = result.keep, result.decisions, result.edges
        seconds = time.perf_counter() - t0
        scored = outcome(items, keep, drops)
        figures[rule] = scored
        out.append(f"| {name} | {rule} | {scored.rows:,} | {scored.groups:,} | {scored.false_removals} "
                   f"({100 * scored.distinct_removed:.2f}%) | {100 * scored.recall:.1f}% | {seconds:.1f} | "
                   + (f"{edges.get('verified', 0):,} / {edges.get('rejected_by_verification', 0):,}"
                      if rule == "production" else "") + " |")
    copies: dict[str, int] = {}
    for it in items:
        if it.copy != "original":
            copies[it.copy] = copies.get(it.copy, 0) + 1
    figures["per_copy"] = {k: (v, {r: figures[r].missed_by_kind.get(k, 0) for r in ("closure", "semdedup",
                                                                                    "production")})
                           for k, v in sorted(copies.items())}
    figures["features_s"] = t_features
    return out, figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-kind", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sets", default="art,photo", help="comma-separated: art, photo")
    args = ap.parse_args()

    lines = ["| set | rule | rows | groups | distinct removed | copy recall | dedup s | verified / rejected |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    per_copy = {}
    wanted = args.sets.split(",")
    sets = [("art", list(generate(args.per_kind, args.seed, args.data)))] if "art" in wanted else []
    if "photo" in wanted:
        sets.append(("photo", photo_items(args.data / "corpus_dev", args.seed)))
    extra = []
    for name, items in sets:
        kinds: dict[str, int] = {}
        for it in items:
            if it.copy == "original":
                kinds[it.kind] = kinds.get(it.kind, 0) + 1
        extra.append(f"{name}: originals per kind {kinds}")
        rows, figures = evaluate(name, items, args.threads)
        lines += rows
        per_copy[name] = figures["per_copy"]
        extra.append(f"{name}: features {figures['features_s']:.0f} s for {len(items)} images")
    print("\n".join(lines))
    print()
    print("| set | copy kind | copies | missed: closure | semdedup | production |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for name, table in per_copy.items():
        for kind, (count, missed) in table.items():
            print(f"| {name} | {kind} | {count} | {missed['closure']} | {missed['semdedup']} | "
                  f"{missed['production']} |")
    print()
    for line in extra:
        print(line)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}")


if __name__ == "__main__":
    main()
