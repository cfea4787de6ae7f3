"""Hierarchical k-means at scale: the clustering behind `curation.rebalance`, on synthetic 512-d embeddings.

    .venv/bin/python bench/kmeans_scale.py [--sizes 100000 300000 1000000] [--dim 512] [--niter 20]

Embeddings are a mixture of Gaussians on the unit sphere: 2,000 centres with Zipf-like weights (a few very large
modes, like a crawl's over-represented concepts), each point its centre plus isotropic noise (cosine ~0.6 to the
centre), L2-normalised, float32. Each size runs in a fresh child process, so its peak RSS (ru_maxrss) is its own;
the child also times the top-down balanced sampling (`cluster_keep_probability`). Writes
bench/results/kmeans_scale.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from curation.rebalance import (  # noqa: E402
    RebalanceConfig,
    cluster_keep_probability,
    default_clusters_per_level,
    hierarchical_kmeans,
)


def make_embeddings(n: int, dim: int, seed: int = 0, centres: int = 2000, chunk: int = 100_000) -> np.ndarray:
    """(n, dim) float32 unit rows from a Zipf-weighted mixture of Gaussians on the sphere, generated in chunks."""
    rng = np.random.default_rng(seed)
    mu = rng.standard_normal((centres, dim), dtype=np.float32)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    weights = 1.0 / np.arange(1, centres + 1) ** 0.8
    weights /= weights.sum()
    out = np.empty((n, dim), np.float32)
    sigma = np.float32(1.3 / np.sqrt(dim))  # noise norm ~1.3 -> cosine to the centre ~0.6
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        z = rng.choice(centres, size=m, p=weights)
        block = rng.standard_normal((m, dim), dtype=np.float32)
        block *= sigma
        block += mu[z]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + m] = block
    return out


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(n: int, dim: int, niter: int, levels: int) -> dict:
    """One size in this process: generate, cluster, balance; returns timings and peak RSS."""
    t0 = time.perf_counter()
    x = make_embeddings(n, dim)
    t_gen = time.perf_counter() - t0
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    config = RebalanceConfig(levels=levels, niter=niter)
    ks = default_clusters_per_level(n, levels)
    load = os.getloadavg()[0]
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    labels, _ = hierarchical_kmeans(x, levels, ks, seed=0, niter=niter,
                                    max_points_per_centroid=config.max_points_per_centroid, init=config.init)
    t_kmeans = time.perf_counter() - t0
    cpu_kmeans = _cpu_seconds() - cpu0
    t0 = time.perf_counter()
    p, budget = cluster_keep_probability(labels, None, config.cluster_cap_factor)
    t_balance = time.perf_counter() - t0
    leaf = np.bincount(labels[:, 0])
    return {"n": n, "dim": dim, "ks": list(ks), "niter": niter, "gen_s": t_gen, "kmeans_s": t_kmeans,
            "balance_s": t_balance, "kmeans_cpu_s": cpu_kmeans, "load": load,
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_after_data": rss_data, "data_bytes": x.nbytes, "expected_kept": float(p.sum()), "budget": budget,
            "leaf_min": int(leaf[leaf > 0].min()), "leaf_max": int(leaf.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kmeans_scale.md")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.dim, args.niter, args.levels)))
        return
    rows = []
    for n in args.sizes:
        proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--niter",
                               str(args.niter), "--levels", str(args.levels)], check=True, capture_output=True,
                              text=True)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(f"n={n:>9,} ks={row['ks']} kmeans {row['kmeans_s']:.1f}s (cpu {row['kmeans_cpu_s']:.1f}s) "
              f"balance {row['balance_s']:.2f}s "
              f"peak {row['peak_rss'] / 2**30:.2f} GiB", flush=True)
    write_report(rows, args)


def write_report(rows: list[dict], args: argparse.Namespace) -> None:
    import faiss

    lines = [
        "# Hierarchical k-means at scale (`bench/kmeans_scale.py`)",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPUs "
        f"(shared with other jobs), {platform.python_version()}, faiss {faiss.__version__}, numpy {np.__version__}",
        f"- data: mixture of 2,000 Zipf-weighted Gaussians on the unit sphere, {args.dim}-d float32; "
        f"{args.levels} levels, default k per level (`default_clusters_per_level`), niter {args.niter}, spherical "
        "faiss k-means trained on <= 256 points per centroid, k-means++ seeding on <= 16 points per centroid",
        "- peak RSS: ru_maxrss of a fresh child process per size (includes the embedding matrix itself)",
        "",
        "| rows | k per level | data | generate (s) | hierarchical k-means wall (s) | k-means CPU (s) | balancing (s) "
        "| peak RSS | leaf size min-max | load avg at start |",
        "| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        lines.append(f"| {r['n']:,} | {r['ks']} | {r['data_bytes'] / 2**30:.2f} GiB | {r['gen_s']:.1f} | "
                     f"{r['kmeans_s']:.1f} | {r['kmeans_cpu_s']:.1f} | {r['balance_s']:.2f} | "
                     f"{r['peak_rss'] / 2**30:.2f} GiB | {r['leaf_min']}-{r['leaf_max']} | {r['load']:.1f} |")
    first, last = rows[0], rows[-1]
    growth = last["kmeans_s"] / first["kmeans_s"]
    cpu_growth = last["kmeans_cpu_s"] / first["kmeans_cpu_s"]
    lines += ["", f"Growth {first['n']:,} -> {last['n']:,} ({last['n'] / first['n']:.0f}x rows): k-means wall time "
              f"x{growth:.1f}, CPU time x{cpu_growth:.1f}, peak RSS x{last['peak_rss'] / first['peak_rss']:.1f}.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
