"""Training-shard preparation of one large JPEG: full decode + resize (the shards-1 path) against `prepare`
(header size, DCT-scaled decode to the smallest size covering the bucket: shards-2), per curriculum stage.

    .venv/bin/python bench/shard_decode.py [--reps 3]

A 6000x4000 q90 JPEG of smooth random texture; each path is run once to warm up, then timed `--reps` times.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from curation.image_io import load_rgb  # noqa: E402
from curation.shards import ShardConfig, aspect_buckets, encode, fit_to_bucket, nearest_bucket, prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)).resize((6000, 4000),
                                                                                      Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    print("| stage | full decode + resize s | `prepare` s | speed-up |\n| ---: | ---: | ---: | ---: |")
    for size in (256, 512, 1024):
        config = ShardConfig(size=size)
        buckets = aspect_buckets(size, config.side_multiple())

        def full(config=config, buckets=buckets):
            rgb = load_rgb(data)
            fitted, _ = fit_to_bucket(rgb, nearest_bucket(rgb.width, rgb.height, buckets))
            encode(fitted, config)

        def reduced(config=config, buckets=buckets):
            prepare(data, config, buckets)

        seconds = {}
        for name, fn in (("full", full), ("reduced", reduced)):
            fn()
            start = time.perf_counter()
            for _ in range(args.reps):
                fn()
            seconds[name] = (time.perf_counter() - start) / args.reps
        ratio = seconds["full"] / seconds["reduced"]
        print(f"| {size} | {seconds['full']:.3f} | {seconds['reduced']:.3f} | {ratio:.1f}x |")


if __name__ == "__main__":
    main()
