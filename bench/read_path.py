"""What the hardened read path (containment, regular-file check, bounded read) costs against a plain read.

    .venv/bin/python bench/read_path.py [--copies 55] [--source ../shared/data/corpus_dev/images]

Builds the same drop as bench/ingest.py (corpus_dev replicated), then, on the same files in the same run:
  plain    `Path.read_bytes()` of every file (the floor: one open + read per file);
  fsspec   `LocalFileSystem.cat_file()` (what the reader used before issue 19);
  before   the reader as it was before issue 19 (curation/sources.py at commit 85f12eb, loaded from git);
  reader   `plan_units` + `read_unit` now (listing with a stat per file, sidecar pairing, realpath containment,
           stat + O_NONBLOCK open + fstat, cap + 1 bounded read) - everything ingest does before decoding.
Best of 3 each; prints markdown rows for bench/BENCHMARKS.md (files/s and the ratio to `plain`), and the reader's
per-file cost at two drop sizes to show it stays flat.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.sources import ReadLimits, plan_units, read_unit  # noqa: E402


def build_drop(source: Path, copies: int, out: Path) -> list[Path]:
    images = sorted(p for p in source.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    files = []
    for c in range(copies):
        sub = out / f"copy{c:03d}"
        sub.mkdir(parents=True)
        for img in images:
            shutil.copyfile(img, sub / img.name)
            files.append(sub / img.name)
    return files


def best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


BEFORE = "85f12eb"


def load_before():
    """The pre-issue-19 reader as a module (it imports only curation modules whose API it used then)."""
    import importlib.util
    import subprocess

    code = subprocess.run(["git", "show", f"{BEFORE}:curation/sources.py"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout
    path = Path(tempfile.mkdtemp()) / "sources_before.py"
    path.write_text(code)
    spec = importlib.util.spec_from_file_location("sources_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["sources_before"] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def run_reader(drop: Path, module=None) -> int:
    plan, read = (plan_units, read_unit) if module is None else (module.plan_units, module.read_unit)
    limits = ReadLimits() if module is None else module.ReadLimits()
    return sum(item.data is not None for unit in plan(str(drop), limits) for item in read(unit, limits))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--copies", type=int, default=55)
    parser.add_argument("--source", default=str(REPO.parent / "shared" / "data" / "corpus_dev" / "images"))
    args = parser.parse_args()
    import fsspec

    fs = fsspec.filesystem("file")
    before = load_before()
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for copies in (max(1, args.copies // 5), args.copies):
            drop = Path(tmp) / f"drop{copies}"
            files = build_drop(Path(args.source), copies, drop)
            n = len(files)
            assert run_reader(drop) == n
            plain = best(lambda: [f.read_bytes() for f in files])  # noqa: B023
            cat = best(lambda: [fs.cat_file(str(f)) for f in files])  # noqa: B023
            old = best(lambda: run_reader(drop, before))  # noqa: B023
            reader = best(lambda: run_reader(drop))  # noqa: B023
            rows.append((n, plain, cat, old, reader))
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}")
    print("| files | plain read, files/s | fsspec cat_file | reader before | reader now | now / before | "
          "now / plain | now, us/file |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for n, plain, cat, old, reader in rows:
        print(f"| {n} | {n / plain:.0f} | {n / cat:.0f} | {n / old:.0f} | {n / reader:.0f} | {old / reader:.2f} | "
              f"{plain / reader:.2f} | {reader / n * 1e6:.0f} |")


if __name__ == "__main__":
    main()
