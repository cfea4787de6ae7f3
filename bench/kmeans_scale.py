"""Hierarchical k-means at scale: the clustering behind `curation.rebalance`, on synthetic 512-d embeddings.

    .venv/bin/python bench/kmeans_scale.py [--sizes 100000 300000 1000000] [--dim 512] [--niter 20]

Embeddings are a mixture of Gaussians on the unit sphere: 2,000 centres with Zipf-like weights (a few very large
modes, like a crawl's over-represented concepts), each point its centre plus isotropic noise (cosine ~0.6 to the
centre), L2-normalised, float32. Each size runs in a fresh child process, so its peak RSS (ru_maxrss) is its own;
the child also times the top-down balanced sampling (`cluster_keep_probability`), splits each level's time into
k-means++ seeding and faiss (Lloyd iterations + the final assignment), and measures its own bound: the float32 GEMM
rate of this machine (numpy/BLAS, all threads), against which the k-means FLOPs (2 x points x k x d per Lloyd
iteration over the training sample, plus the assignment of every point) are compared.

Peer in the same run: every size runs twice, as shipped and with `OPENBLAS_CORETYPE` set to the kernel this CPU
supports (`--coretype auto`: SkylakeX with AVX-512, else Haswell with AVX2; `none` skips it). faiss-cpu's wheel
bundles its own OpenBLAS (0.3.15), whose run-time CPU detection can fall back to the generic Prescott (SSE3) kernel
on CPUs newer than it (e.g. Sapphire Rapids); the report names the kernel faiss's OpenBLAS chose in each run.
Writes bench/results/kmeans_scale.md.
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

import curation.rebalance as rebalance  # noqa: E402
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


def gemm_bound(dim: int, k: int, rows: int = 65536, reps: int = 5) -> float:
    """GFLOP/s of the k-means inner product (rows x dim) @ (dim x k) in float32 on all threads (BLAS)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((rows, dim), dtype=np.float32)
    b = rng.standard_normal((dim, k), dtype=np.float32)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * rows * dim * k / best / 1e9


def kmeans_flops(n: int, dim: int, ks: list[int], niter: int, max_points_per_centroid: int) -> float:
    """FLOPs of the distance GEMMs: per level, niter passes over the training sample plus one over every point."""
    total, points = 0.0, n
    for k in ks:
        k = max(1, min(int(k), points))
        if 1 < k < points:
            train = min(points, max_points_per_centroid * k)
            total += 2.0 * dim * k * (niter * train + points)
        points = k
    return total


class _Timer:
    """Wraps a function of `curation.rebalance` and adds up the seconds spent in it."""

    def __init__(self, name: str) -> None:
        self.name, self.fn, self.seconds = name, getattr(rebalance, name), []
        setattr(rebalance, name, self)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds.append(time.perf_counter() - start)


def faiss_blas_core() -> str:
    """The kernel ('Prescott', 'Haswell', 'SkylakeX', ...) that the OpenBLAS bundled with faiss-cpu selected."""
    import ctypes
    import glob

    import faiss

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(faiss.__file__)), "faiss_cpu.libs", "libopenblas*"))
    if not libs:
        return "unknown (no bundled OpenBLAS)"
    lib = ctypes.CDLL(libs[0])
    lib.openblas_get_corename.restype = ctypes.c_char_p
    return lib.openblas_get_corename().decode()


def auto_coretype() -> str:
    """The OpenBLAS kernel name for this CPU's widest vector unit (SkylakeX: AVX-512, Haswell: AVX2)."""
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "").split()
    return "SkylakeX" if "avx512f" in flags else "Haswell" if "avx2" in flags else ""


def child(n: int, dim: int, niter: int, levels: int) -> dict:
    """One size in this process: generate, cluster, balance; returns timings and peak RSS."""
    t0 = time.perf_counter()
    x = make_embeddings(n, dim)
    t_gen = time.perf_counter() - t0
    rss_data = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    config = RebalanceConfig(levels=levels, niter=niter)
    ks = default_clusters_per_level(n, levels)
    load = os.getloadavg()[0]
    bound = gemm_bound(dim, ks[0])
    level_timer, seed_timer = _Timer("_kmeans"), _Timer("kmeanspp_init")
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    labels, _ = hierarchical_kmeans(x, levels, ks, seed=0, niter=niter,
                                    max_points_per_centroid=config.max_points_per_centroid, init=config.init)
    t_kmeans = time.perf_counter() - t0
    cpu_kmeans = _cpu_seconds() - cpu0
    flops = kmeans_flops(n, dim, list(ks), niter, config.max_points_per_centroid)
    t0 = time.perf_counter()
    p, budget = cluster_keep_probability(labels, None, config.cluster_cap_factor)
    t_balance = time.perf_counter() - t0
    leaf = np.bincount(labels[:, 0])
    return {"n": n, "dim": dim, "ks": list(ks), "niter": niter, "gen_s": t_gen, "kmeans_s": t_kmeans,
            "balance_s": t_balance, "kmeans_cpu_s": cpu_kmeans, "load": load, "level_s": level_timer.seconds,
            "seed_s": seed_timer.seconds, "gflop": flops / 1e9, "bound_gflops": bound, "blas": faiss_blas_core(),
            "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rss_after_data": rss_data, "data_bytes": x.nbytes, "expected_kept": float(p.sum()), "budget": budget,
            "leaf_min": int(leaf[leaf > 0].min()), "leaf_max": int(leaf.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--coretype", default="auto", help="OPENBLAS_CORETYPE of the peer run: auto, none or a name")
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "kmeans_scale.md")
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(child(args.child, args.dim, args.niter, args.levels)))
        return
    coretype = auto_coretype() if args.coretype == "auto" else "" if args.coretype == "none" else args.coretype
    variants = [("as shipped", {})] + ([(f"OPENBLAS_CORETYPE={coretype}", {"OPENBLAS_CORETYPE": coretype})]
                                       if coretype else [])
    rows = []
    for n in args.sizes:
        for label, extra in variants:
            env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"} | extra
            proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--dim", str(args.dim), "--niter",
                                   str(args.niter), "--levels", str(args.levels)], check=True, capture_output=True,
                                  text=True, env=env)
            row = json.loads(proc.stdout.strip().splitlines()[-1]) | {"variant": label}
            rows.append(row)
            print(f"n={n:>9,} {label:28s} ks={row['ks']} kmeans {row['kmeans_s']:.1f}s (cpu "
                  f"{row['kmeans_cpu_s']:.1f}s) peak {row['peak_rss'] / 2**30:.2f} GiB; levels "
                  f"{[round(s, 1) for s in row['level_s']]} s, k-means++ {[round(s, 1) for s in row['seed_s']]} s; "
                  f"{row['gflop'] / row['kmeans_s']:.0f} GFLOP/s vs GEMM bound {row['bound_gflops']:.0f} "
                  f"(faiss BLAS {row['blas']}, load {row['load']:.1f})", flush=True)
    write_report(rows, args)


def write_report(rows: list[dict], args: argparse.Namespace) -> None:
    import faiss

    lines = [
        "# Hierarchical k-means at scale (`bench/kmeans_scale.py`)",
        "",
        f"- date: {datetime.date.today().isoformat()}; machine: {platform.machine()}, {os.cpu_count()} CPUs, "
        f"{platform.python_version()}, faiss {faiss.__version__}, numpy {np.__version__}",
        f"- data: mixture of 2,000 Zipf-weighted Gaussians on the unit sphere, {args.dim}-d float32; "
        f"{args.levels} levels, default k per level (`default_clusters_per_level`), niter {args.niter}, spherical "
        "faiss k-means trained on <= 256 points per centroid, k-means++ seeding on <= 16 points per centroid",
        "- peak RSS: ru_maxrss of a fresh child process per size (includes the embedding matrix itself)",
        "",
        "| rows | run (faiss's OpenBLAS kernel) | k per level | data | hierarchical k-means wall (s) | per level (s), "
        "of which k-means++ | k-means CPU (s) | GEMM GFLOP | achieved GFLOP/s | GEMM bound GFLOP/s | share of bound "
        "| balancing (s) | peak RSS | leaf size min-max | load avg at start |",
        "| ---: | --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in rows:
        levels = " / ".join(f"{a:.1f} ({b:.1f})" for a, b in zip(r["level_s"], r["seed_s"] + [0.0] * 9, strict=False))
        achieved = r["gflop"] / r["kmeans_s"]
        lines.append(f"| {r['n']:,} | {r['variant']} ({r['blas']}) | {r['ks']} | {r['data_bytes'] / 2**30:.2f} GiB | "
                     f"{r['kmeans_s']:.1f} | "
                     f"{levels} | {r['kmeans_cpu_s']:.1f} | {r['gflop']:,.0f} | {achieved:.0f} | "
                     f"{r['bound_gflops']:.0f} | {achieved / r['bound_gflops']:.2f} | {r['balance_s']:.2f} | "
                     f"{r['peak_rss'] / 2**30:.2f} GiB | {r['leaf_min']}-{r['leaf_max']} | {r['load']:.1f} |")
    lines.append("")
    for label in dict.fromkeys(r["variant"] for r in rows):
        mine = [r for r in rows if r["variant"] == label]
        first, last = mine[0], mine[-1]
        lines.append(f"Growth {first['n']:,} -> {last['n']:,} ({last['n'] / first['n']:.0f}x rows), {label}: k-means "
                     f"wall x{last['kmeans_s'] / first['kmeans_s']:.1f}, "
                     f"CPU x{last['kmeans_cpu_s'] / first['kmeans_cpu_s']:.1f}, "
                     f"peak RSS x{last['peak_rss'] / first['peak_rss']:.1f}.")
    if len({r["variant"] for r in rows}) > 1:
        by_n: dict[int, list[dict]] = {}
        for r in rows:
            by_n.setdefault(r["n"], []).append(r)
        lines.append("Speed-up of the forced kernel over the shipped one: " + ", ".join(
            f"{n:,}: x{rs[0]['kmeans_s'] / rs[-1]['kmeans_s']:.1f}" for n, rs in by_n.items()) + ".")
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
