"""Semantic dedup at scale: faiss range search (IVF above `exact_search_max`) over synthetic clustered embeddings.

    .venv/bin/python bench/semantic_scale.py [--n 200000] [--dim 512] [--threshold 0.9]

Embeddings are drawn around 1,000 topic centres (cosine ~0.5 inside a topic, like real image embeddings), and
near-duplicate groups of 2-4 are planted (cosine 0.93-0.995 to their seed) together with hard negatives just below the
threshold (cosine ~0.80-0.87). Reports wall time, peak RSS and the recall/precision of the planted pairs for the
pipeline's `cosine_pairs` at several sizes, so the growth from 50k to the full n is visible.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from measure import PeakRss  # noqa: E402

from curation.dedup import DedupConfig, cosine_pairs  # noqa: E402
from curation.embedding import l2_normalise  # noqa: E402


def _with_cosine(seed: np.ndarray, cosine: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Unit vectors at exactly the given cosine to each seed row (seed + an orthogonal unit direction)."""
    noise = rng.normal(size=seed.shape).astype(np.float32)
    noise -= (noise * seed).sum(1, keepdims=True) * seed
    noise = l2_normalise(noise)
    c = cosine[:, None].astype(np.float32)
    return l2_normalise(c * seed + np.sqrt(1 - c**2) * noise)


def make_data(n: int, dim: int, groups: int, rng: np.random.Generator) -> tuple[np.ndarray, set, set]:
    centres = l2_normalise(rng.normal(size=(1000, dim)).astype(np.float32))
    topic = rng.integers(0, len(centres), n)
    emb = _with_cosine(centres[topic], np.full(n, 0.5), rng)
    positives, hard = set(), set()
    slots = rng.permutation(n)
    cursor = 0
    for _ in range(groups):
        size = int(rng.integers(2, 5))
        members = slots[cursor : cursor + size]
        cursor += size
        seed = emb[members[0]][None]
        cos = rng.uniform(0.93, 0.995, size - 1)
        emb[members[1:]] = _with_cosine(np.repeat(seed, size - 1, 0), cos, rng)
        for a in members:
            for b in members:
                if a < b:
                    positives.add((int(a), int(b)))
    for _ in range(groups // 2):  # hard negatives: close, but below any sensible threshold
        a, b = slots[cursor], slots[cursor + 1]
        cursor += 2
        emb[b] = _with_cosine(emb[a][None], rng.uniform(0.80, 0.87, 1), rng)[0]
        hard.add((int(min(a, b)), int(max(a, b))))
    return emb, positives, hard


def run(n: int, dim: int, threshold: float, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    emb, positives, hard = make_data(n, dim, groups=max(100, n // 100), rng=rng)
    config = DedupConfig()
    with PeakRss() as rss:
        start = time.perf_counter()
        i, j, _ = cosine_pairs(emb, threshold, exact_max=config.exact_search_max, nprobe=config.ivf_nprobe)
        elapsed = time.perf_counter() - start
    found = set(zip(np.minimum(i, j).tolist(), np.maximum(i, j).tolist(), strict=True))
    # positives within a group can fall below the threshold when two members are both far from the seed
    expected = {p for p in positives if float(emb[p[0]] @ emb[p[1]]) >= threshold}
    tp = len(found & expected)
    return {"n": n, "seconds": elapsed, "peak_gib": rss.peak / 2**30, "pairs_found": len(found),
            "recall": tp / max(1, len(expected)), "precision": tp / max(1, len(found)),
            "hard_negatives_found": len(found & hard), "expected": len(expected),
            "index": "flat" if n <= config.exact_search_max else "IVF"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--threshold", type=float, default=DedupConfig.semantic_threshold)
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="default: 50k, 100k and --n")
    args = parser.parse_args()
    sizes = args.sizes or sorted({50_000, 100_000, args.n})
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; "
          f"{time.strftime('%Y-%m-%d')}; dim {args.dim}, cosine >= {args.threshold}")
    print("| n | index | seconds | peak RSS GiB | planted pairs | recall | precision | hard negatives found |")
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        r = run(n, args.dim, args.threshold, seed=n)
        print(f"| {r['n']:,} | {r['index']} | {r['seconds']:.1f} | {r['peak_gib']:.2f} | {r['expected']:,} | "
              f"{r['recall']:.4f} | {r['precision']:.4f} | {r['hard_negatives_found']} |", flush=True)


if __name__ == "__main__":
    main()
