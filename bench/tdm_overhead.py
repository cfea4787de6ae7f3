"""Cost of the TDM-reservation check at ingest, as a ratio to the probe ingest already runs on every input.

    PYTHONPATH=. .venv/bin/python bench/tdm_overhead.py [--repeat 5]

Per real image of `../shared/data/corpus_dev/images` (and of `ai_dev`): `probe_image(..., with_metadata=True)` (the
decode + metadata extraction of ingest) against `curation.ingest.check_tdm` (XMP/sidecar scan, and the C2PA reader
only when the bytes contain "c2pa"). Best of --repeat per file, summed. Takes a few seconds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from curation.image_io import ProbeLimits, probe_image  # noqa: E402
from curation.ingest import check_tdm  # noqa: E402
from curation.tdm import TdmPolicy  # noqa: E402


def best(repeat: int, fn, *args) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    files = [p for d in ("corpus_dev/images", "ai_dev") for p in sorted((Path(args.data) / d).rglob("*"))
             if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")]
    probe_s = tdm_s = 0.0
    policy = TdmPolicy()
    for path in files:
        data = path.read_bytes()
        facts = probe_image(data, ProbeLimits(min_side=1), with_metadata=True)
        metadata = {"embedded": facts.metadata or {}, "sidecar": {}}
        probe_s += best(args.repeat, probe_image, data, ProbeLimits(min_side=1), True)
        tdm_s += best(args.repeat, check_tdm, data, facts.format, metadata, policy)
    print(f"{len(files)} files: probe {probe_s * 1e3:.1f} ms, tdm check {tdm_s * 1e3:.2f} ms, "
          f"ratio {tdm_s / probe_s:.4f}")


if __name__ == "__main__":
    main()
