"""Keep rates of the default rebalancing caps on dev sets where one concept holds about half of the corpus.

    PYTHONPATH=. .venv/bin/python bench/rebalance_defaults.py [--sizes 400 4000 40000] [--out bench/results/...]

Dev sets from `tests/curation/rebalance_devset.py` (one head concept on 46% or 50% of the samples, a Zipf tail of
n/15 concepts or only five, 30% of the non-head samples without any concept). For each, `curation.rebalance.rebalance`
runs with the defaults and, for comparison, with the previous defaults (t = 0.95 quantile of the per-concept counts,
top-cluster budget sum(min(size, 3 x median))). Reported: t, the share of the head kept, of the samples whose concepts
are all rare (<= 1% of the corpus) kept, of all non-head samples kept, and the head's share before and after; the
clusters alone (no concepts) the same way. Takes ~1 min on 2 cores (k-means at 40k dominates).
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

from curation.rebalance import (  # noqa: E402
    RebalanceConfig,
    cluster_keep_probability,
    concept_counts,
    rebalance,
)
from tests.curation.rebalance_devset import dev_set, rare_mask  # noqa: E402


def old_config(ds, result) -> RebalanceConfig:
    """The previous defaults, made explicit: t = 0.95 quantile (>= 20), top budget sum(min(size, 3 x median))."""
    counts = concept_counts(ds.concepts)
    t = max(20.0, float(np.quantile(np.fromiter(counts.values(), np.float64), 0.95)))
    top = np.bincount(result.cluster_labels[:, -1])
    top = top[top > 0]
    budget = float(np.minimum(top, 3.0 * np.median(top)).sum())
    return RebalanceConfig(concept_cap=t, cluster_budget=min(1.0, budget / len(ds.sample_ids)))


def rates(ds, kept: np.ndarray) -> dict:
    rare = rare_mask(ds, 0.01)
    return {"head": kept[ds.head].mean(), "rare": kept[rare].mean() if rare.any() else float("nan"),
            "nonhead": kept[~ds.head].mean(), "share_after": (kept & ds.head).sum() / max(1, kept.sum())}


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[400, 4000, 40000])
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
    lines += ["", f"runtime {time.time() - start:.0f} s; clusters alone = expected keep rate of the cluster view"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
