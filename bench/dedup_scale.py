"""Near-duplicate search at scale: `curation.hamming.hamming_pairs` on up to 1M synthetic 64-bit hashes.

    .venv/bin/python bench/dedup_scale.py [--sizes 100000,300000,1000000] [--thresholds 4,6,8,10]
                                          [--skew 0.2] [--flat-max 100000] [--seed 0]

Builds, for every size n, one set of synthetic hashes with a known ground truth:
  background  uniform random 64-bit values;
  planted     10% of the rows in groups of 2-5 (a seed plus copies with exactly d bits flipped, d uniform in 0..12,
              so every threshold has planted pairs at its limit and just above it); the truth is every pair inside
              a group with its exact distance;
  blanks      0.1% of the rows equal 0 (blank images: one big bucket of exact duplicates);
  skewed      (the "skewed" data set) another `--skew` fraction drawn from 1000 centers with 0-3 random bit flips,
              like real pHashes of near-identical content (its pairs are real but not part of the planted truth).
Runs `hamming_pairs` once per (data set, n, threshold), each in a fresh child process, and reports wall and CPU
time, RSS before the call (data + truth) and its peak during the call (psutil, sampled every 5 ms in a thread), the
size of the int64 output itself, the number of pairs, recall of the planted pairs within the threshold,
planted pairs just above it that were reported (must be 0), and the precision of all reported pairs (each one's
distance recomputed by popcount; must be 1.0). For n <= `--flat-max` it also times the exact faiss
IndexBinaryFlat path and checks that both return identical arrays. Prints a markdown table for bench/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation import hamming  # noqa: E402

MAX_PLANTED_DISTANCE = 12


class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled in a thread."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.proc = interval, psutil.Process()
        self.peak = self.base = 0

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def flip_bits(values: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each value with exactly counts[k] distinct random bits flipped (vectorized: a random permutation per row)."""
    out = values.copy()
    if not len(values):
        return out
    perm = np.argsort(rng.random((len(values), 64)), axis=1)  # distinct bit positions per row
    for b in range(int(counts.max(initial=0))):
        sel = counts > b
        out[sel] ^= np.uint64(1) << perm[sel, b].astype(np.uint64)
    return out


def make_data(n: int, skew: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Synthetic hashes and the planted truth: (codes, truth_i, truth_j, truth_distance), truth_i < truth_j."""
    codes = rng.integers(0, 2**64, n, dtype=np.uint64)
    rows = rng.permutation(n)  # disjoint row sets for each kind of planting
    used = 0
    if skew:
        k = int(n * skew)
        centers = rng.integers(0, 2**64, 1000, dtype=np.uint64)
        codes[rows[:k]] = flip_bits(centers[rng.integers(0, 1000, k)], rng.integers(0, 4, k), rng)
        used = k
    blanks = max(2, n // 1000)
    codes[rows[used : used + blanks]] = 0
    used += blanks
    # Groups of 2-5 rows: a random seed, and copies at an exact distance from it.
    sizes = rng.integers(2, 6, n // 10 // 3)
    sizes = sizes[np.cumsum(sizes) <= n // 10]
    group_rows = rows[used : used + int(sizes.sum())]
    starts = np.cumsum(sizes) - sizes
    seed_rows = group_rows[starts]
    copy_rows = np.delete(group_rows, starts)
    seed_of_copy = np.repeat(seed_rows, sizes - 1)
    codes[seed_rows] = rng.integers(0, 2**64, len(seed_rows), dtype=np.uint64)
    dist = rng.integers(0, MAX_PLANTED_DISTANCE + 1, len(copy_rows))
    codes[copy_rows] = flip_bits(codes[seed_of_copy], dist, rng)
    # Truth: every pair inside a group (seed-copy and copy-copy), distance by popcount.
    ti, tj = [], []
    for size in range(2, 6):
        members = np.stack([group_rows[starts[sizes == size] + m] for m in range(size)], axis=1)
        for a in range(size):
            for b in range(a + 1, size):
                ti.append(members[:, a])
                tj.append(members[:, b])
    ti, tj = np.concatenate(ti).astype(np.int64), np.concatenate(tj).astype(np.int64)
    ti, tj = np.minimum(ti, tj), np.maximum(ti, tj)
    return codes, ti, tj, np.bitwise_count(codes[ti] ^ codes[tj]).astype(np.int64)


def score(codes: np.ndarray, result: tuple[np.ndarray, np.ndarray, np.ndarray], threshold: int,
          truth: tuple[np.ndarray, np.ndarray, np.ndarray]) -> dict[str, float]:
    """Recall of the planted pairs within the threshold, planted pairs above it reported, precision of the output."""
    i, j, d = result
    n = np.int64(len(codes))
    reported = i * n + j
    ti, tj, td = truth
    found = np.isin(ti * n + tj, reported)
    within = td <= threshold
    just_above = (td > threshold) & (td <= threshold + 2)
    exact = (np.bitwise_count(codes[i] ^ codes[j]).astype(np.int64) == d) & (d <= threshold) & (i < j)
    return {
        "recall": float(found[within].mean()) if within.any() else 1.0,
        "planted": int(within.sum()),
        "above_reported": int(found[just_above].sum()),
        "above": int(just_above.sum()),
        "precision": float(exact.mean()) if len(i) else 1.0,
    }


def run(codes: np.ndarray, threshold: int, fn) -> tuple[tuple[np.ndarray, ...], float, float, PeakRSS]:
    start, cpu = time.perf_counter(), time.process_time()
    with PeakRSS() as rss:
        result = fn(codes, threshold)
    return result, time.perf_counter() - start, time.process_time() - cpu, rss


def plan_text(codes: np.ndarray, threshold: int) -> str:
    """The chunking the cost model picked, as width/radius per chunk (for reading the timings)."""
    n = len(np.unique(codes))
    plan, _ = hamming._plan(n, n, threshold, True)
    return " ".join(f"{w}/{r}" for _, w, r in plan)


def one_case(case: dict) -> dict:
    """Measure one (data set, n, threshold) in this process (a fresh one: RSS is not polluted by earlier runs)."""
    n, threshold = case["n"], case["threshold"]
    codes, *truth = make_data(n, case["skew"], np.random.default_rng(case["seed"] + n))
    result, wall, cpu, rss = run(codes, threshold, hamming.hamming_pairs)
    row = {"wall": wall, "cpu": cpu, "base": rss.base, "peak": rss.peak, "pairs": len(result[0]),
           "plan": plan_text(codes, threshold), **score(codes, result, threshold, tuple(truth))}
    if n <= case["flat_max"]:
        ref, row["flat"], _, _ = run(codes, threshold, lambda c, t: hamming._flat_pairs(c, None, t, 16384))
        row["flat_same"] = all(np.array_equal(a, b) for a, b in zip(result, ref, strict=True))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100000,300000,1000000", help="comma-separated n")
    parser.add_argument("--thresholds", default="4,6,8,10", help="comma-separated Hamming thresholds")
    parser.add_argument("--skew", type=float, default=0.2,
                        help="fraction of rows from 1000 centers in the skewed data set (0: uniform set only)")
    parser.add_argument("--flat-max", type=int, default=100_000, help="also time faiss IndexBinaryFlat up to this n")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one measurement, as JSON, in a child process
    args = parser.parse_args()
    if args.case:
        print(json.dumps(one_case(json.loads(args.case))))
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    thresholds = [int(t) for t in args.thresholds.split(",")]
    datasets = [("uniform", 0.0)] + ([(f"skewed {args.skew:.0%}", args.skew)] if args.skew else [])

    mem = psutil.virtual_memory().total / 2**30
    load = os.getloadavg()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {mem:.0f} GiB, Python {platform.python_version()}, "
          f"numpy {np.__version__}; hamming_pairs threads: {hamming._workers()}. "
          f"Date: {datetime.date.today().isoformat()}. Load average at start: {load[0]:.2f}.\n")
    print("| data | n | t | chunks (bits/radius) | wall s | CPU s | RSS before / peak MiB | output MiB | pairs "
          "| planted recall | planted t+1..t+2 reported | precision | faiss flat s |")
    print("| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    mib = 2**20
    for name, skew in datasets:
        for n in sizes:
            for threshold in thresholds:
                case = {"n": n, "threshold": threshold, "skew": skew, "seed": args.seed, "flat_max": args.flat_max}
                child = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True,
                                       text=True, check=True)
                r = json.loads(child.stdout.strip().splitlines()[-1])
                flat = f"{r['flat']:.2f}" + ("" if r["flat_same"] else " (DIFFERS)") if "flat" in r else ""
                print(f"| {name} | {n:,} | {threshold} | {r['plan']} | {r['wall']:.2f} | {r['cpu']:.2f} "
                      f"| {r['base'] / mib:.0f} / {r['peak'] / mib:.0f} | {r['pairs'] * 24 / mib:.0f} "
                      f"| {r['pairs']:,} | {r['recall']:.4f} ({r['planted']:,}) | {r['above_reported']} of "
                      f"{r['above']:,} | {r['precision']:.4f} | {flat} |", flush=True)


if __name__ == "__main__":
    main()
