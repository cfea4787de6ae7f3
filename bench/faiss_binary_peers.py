"""faiss's binary indexes as peers of `curation.hamming.hamming_pairs` (the figures quoted under "Near-duplicate hash
search at scale" in BENCHMARKS.md).

    .venv/bin/python bench/faiss_binary_peers.py [--n 100000] [--thresholds 4,10] [--seed 0]

The data and the scoring are `bench/dedup_scale.py`'s (uniform 64-bit hashes, 10% planted groups at known distances,
0.1% blanks). Each index answers the same self-join as a range search (radius t + 1: faiss reports distances strictly
below it), pairs i < j kept; recall is over the planted pairs within t, precision re-checks every pair by popcount.
Index build time is included: a dedup increment builds its index once.

  IndexBinaryFlat        exact brute force (the pipeline's path before hamming_pairs)
  IndexBinaryMultiHash   nhash tables over b-bit substrings, nflip bit flips probed per table
  IndexBinaryHash        one table over the first b bits, nflip flips probed
  IndexBinaryIVF         k-means buckets over the codes, nprobe buckets visited (approximate)
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from dedup_scale import make_data, score  # noqa: E402

from curation.hamming import hamming_pairs  # noqa: E402


def faiss_pairs(index, codes: np.ndarray, threshold: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Self-join of `codes` through a built faiss binary index, in query blocks."""
    x = codes.view(np.uint8).reshape(-1, 8)
    out_i, out_j, out_d = [], [], []
    for start in range(0, len(x), 16384):
        lims, dist, ids = index.range_search(x[start:start + 16384], threshold + 1)
        qi = np.repeat(np.arange(start, start + len(lims) - 1, dtype=np.int64), np.diff(lims).astype(np.int64))
        keep = qi < ids
        out_i.append(qi[keep])
        out_j.append(ids[keep].astype(np.int64))
        out_d.append(dist[keep].astype(np.int64))
    i, j, d = np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)
    order = np.lexsort((j, i))
    return i[order], j[order], d[order]


def indexes(threshold: int):
    import faiss

    def flat():
        return faiss.IndexBinaryFlat(64)

    def multihash():
        # 8 tables over 8-bit substrings, no flips probed: exact while t < 8 (a pair within t leaves at least one
        # substring identical), approximate above
        return faiss.IndexBinaryMultiHash(64, 8, 8)

    def single_hash():
        index = faiss.IndexBinaryHash(64, 16)
        index.nflip = min(threshold, 3)  # probing all flips up to t in 16 bits is most of the table at t = 10
        return index

    def ivf():
        quantizer = faiss.IndexBinaryFlat(64)
        index = faiss.IndexBinaryIVF(quantizer, 64, 1024)
        index.nprobe = 16
        return index

    return {"IndexBinaryFlat": flat, "IndexBinaryMultiHash (8 x 8 bits)": multihash,
            f"IndexBinaryHash (16 bits, nflip {min(threshold, 3)})": single_hash,
            "IndexBinaryIVF (nlist 1024, nprobe 16)": ivf}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--thresholds", default="4,10")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    codes, *truth = make_data(args.n, 0.0, np.random.default_rng(args.seed + args.n))
    x = codes.view(np.uint8).reshape(-1, 8)
    print("| index | n | t | seconds (build + search) | recall | precision | pairs |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for t in (int(v) for v in args.thresholds.split(",")):
        start = time.perf_counter()
        ref = hamming_pairs(codes, t)
        s = score(codes, ref, t, tuple(truth))
        print(f"| hamming_pairs | {args.n:,} | {t} | {time.perf_counter() - start:.2f} | {s['recall']:.4f} | "
              f"{s['precision']:.4f} | {len(ref[0]):,} |")
        for name, make in indexes(t).items():
            start = time.perf_counter()
            index = make()
            if not index.is_trained:
                index.train(x[np.random.default_rng(0).choice(len(x), min(len(x), 1024 * 40), replace=False)])
            index.add(x)
            result = faiss_pairs(index, codes, t)
            s = score(codes, result, t, tuple(truth))
            print(f"| {name} | {args.n:,} | {t} | {time.perf_counter() - start:.2f} | {s['recall']:.4f} | "
                  f"{s['precision']:.4f} | {len(result[0]):,} |")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}; "
          f"load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
