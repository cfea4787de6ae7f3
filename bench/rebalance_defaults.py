"""Keep rates of the default rebalancing caps on dev sets where one concept holds about half of the corpus.

    PYTHONPATH=. .venv/bin/python bench/rebalance_defaults.py [--sizes 400 4000 40000] [--out bench/results/...]

Dev sets from `tests/curation/rebalance_devset.py` (one head concept on 46% or 50% of the samples, a Zipf tail of
n/15 concepts or only five, 30% of the non-head samples without any concept). For each, `curation.rebalance.rebalance`
runs with the defaults and, for comparison, with the previous defaults (t = 0.95 quantile of the per-concept counts,
top-cluster budget sum(min(size, 3 x median))). Reported: t, the share of the head kept, of the samples whose concepts
are all rare (<= 1% of the corpus) kept, of all non-head samples kept, and the head's share before and after; the
clusters alone (no concepts) the same way.

Second table, the mixed dev set (`mixed_dev_set`: one concept on ~half AND one dense embedding mass on half, rare
concepts inside the mass): the defaults against Vo et al. alone (`cluster_spares_rare_concepts=False`), with the
rare names as concepts or as unmatched titles (text entries). Reported: the head concept's share before/after, the
mass's share after, mean p_cluster of the mass members without concept or text (the cut), the keep rate of the rare
members inside the mass, and of the samples outside both. Takes ~1-2 min on 2 cores (k-means at 40k dominates).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from curation.concepts import text_key  # noqa: E402
from curation.rebalance import (  # noqa: E402
    RebalanceConfig,
    cluster_keep_probability,
    concept_counts,
    rebalance,
)
from tests.curation.rebalance_devset import dev_set, mixed_dev_set, rare_mask  # noqa: E402


def old_config(ds, result) -> RebalanceConfig:
    """The previous defaults, made explicit: t = 0.95 quantile (>= 20), top budget sum(min(size, 3 x median)), no
    concept entries inside cut clusters."""
    counts = concept_counts(ds.concepts)
    t = max(20.0, float(np.quantile(np.fromiter(counts.values(), np.float64), 0.95)))
    top = np.bincount(result.cluster_labels[:, -1])
    top = top[top > 0]
    budget = float(np.minimum(top, 3.0 * np.median(top)).sum())
    return RebalanceConfig(concept_cap=t, cluster_budget=min(1.0, budget / len(ds.sample_ids)),
                           cluster_spares_rare_concepts=False)


def rates(ds, kept: np.ndarray) -> dict:
    rare = rare_mask(ds, 0.01)
    return {"head": kept[ds.head].mean(), "rare": kept[rare].mean() if rare.any() else float("nan"),
            "nonhead": kept[~ds.head].mean(), "share_after": (kept & ds.head).sum() / max(1, kept.sum())}


def mixed_rows(n: int) -> list[str]:
    """Rows of the mixed-dev-set table for one size."""
    ds = mixed_dev_set(n, seed=n)
    keys = [text_key(c) for c in ds.concepts]
    unnamed = np.array([not c for c in ds.concepts])
    outside = ~ds.mass & ~ds.head
    cap = 4.0 if n < 100 else None  # the default t's floor (20) is half of a 40-sample corpus: named, as the e2e does
    rows = []
    for names in ("concepts", "titles"):
        concepts = ds.concepts if names == "concepts" else [[] if r else c for c, r in
                                                            zip(ds.concepts, ds.rare_in_mass, strict=True)]
        for rule, spares in (("default", True), ("Vo alone", False)):
            r = rebalance(ds.sample_ids, ds.embeddings, concepts,
                          RebalanceConfig(concept_cap=cap, cluster_spares_rare_concepts=spares), text_keys=keys)
            p = r.keep_probability
            rows.append(f"| {n} | {names} | {rule} | {r.concept_cap:.0f} | {ds.head.mean():.2f} | "
                        f"{p[ds.head].sum() / p.sum():.2f} | {p[ds.mass].sum() / p.sum():.2f} | "
                        f"{r.p_cluster[ds.mass & unnamed].mean():.2f} | {r.kept[ds.rare_in_mass].mean():.2f} | "
                        f"{r.kept[outside].mean():.2f} |")
            print(rows[-1], flush=True)
    return rows


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 4000, 40000])
    parser.add_argument("--mixed-sizes", type=int, nargs="+", default=[40, 400, 4000, 20000])
    parser.add_argument("--out", default="bench/results/rebalance_defaults.md")
    args = parser.parse_args()
    start = time.time()
    lines = [f"rebalance defaults, {datetime.date.today()}, {os.cpu_count()} cores, {cpu_model()}", "",
             "| n | head share | tail concepts | rule | t | head kept | rare kept | non-head kept | head share after |"
             " clusters alone: head kept | non-head kept |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in args.sizes:
        for share, few in ((0.46, True), (0.5, False)):
            ds = dev_set(n, head_share=share, few_concepts=few, seed=n)
            new = rebalance(ds.sample_ids, ds.embeddings, ds.concepts, RebalanceConfig())
            old_cfg = old_config(ds, new)
            old = rebalance(ds.sample_ids, ds.embeddings, ds.concepts, old_cfg)
            p_new, _ = cluster_keep_probability(new.cluster_labels)
            p_old, _ = cluster_keep_probability(new.cluster_labels, old_cfg.cluster_budget * n)
            for name, result, p_cl in (("new", new, p_new), ("old", old, p_old)):
                r = rates(ds, result.kept)
                lines.append(f"| {n} | {share:.2f} | {len(ds.tail_counts)} | {name} | {result.concept_cap:.0f} | "
                             f"{r['head']:.2f} | {r['rare']:.2f} | {r['nonhead']:.2f} | {r['share_after']:.2f} | "
                             f"{p_cl[ds.head].mean():.2f} | {p_cl[~ds.head].mean():.2f} |")
            print(lines[-2], lines[-1], sep="\n", flush=True)
    lines += ["", "| n | rare names | cluster rule | t | head share | head share after | mass share after |"
              " unnamed mass p_cluster | rare in mass kept | outside kept |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for n in args.mixed_sizes:
        lines += mixed_rows(n)
    lines += ["", f"runtime {time.time() - start:.0f} s; clusters alone = expected keep rate of the cluster view; "
              "shares after are expected (from the keep probabilities), kept rates are the seeded draw"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
