"""The whole pipeline up to `training_shards` over N distinct generated images: per stage, seconds per image, bytes
read per image, peak RSS and the growth exponent over N; end to end, the marginal seconds per image against a bound
measured in the same run (sha256 + decode + one default rapidocr pass per image, in 2 processes over the same files).

    python bench/pipeline_scale.py --sizes 250 500 1000 [--out bench/pipeline_scale.json]

Images are distinct on purpose (random gradients, shapes, noise, and a quarter with rendered words), 320-640 px, so
dedup keeps them and every downstream stage sees most of them. Growth exponent: the slope of log(stage seconds) over
log(N) (1.0 is linear; the issue's goal is <= 1.05); bytes read per image should stay flat.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import multiprocessing as mp
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WORDS = ("harbor lantern quiet orbit velvet meadow copper signal winter garden paper tiger north river amber "
         "station cobalt echo marble forest").split()
STAGES = ["source_images", "image_features", "exclusion_signals", "deduplicated_images", "rebalanced_images",
          "ocr_annotations", "captions", "prompt_variants", "training_shards"]


def make_image(i: int, seed: int = 0) -> bytes:
    """One distinct picture (kind by i % 4: gradient + shapes, noise texture, flat shapes, words on a colour)."""
    rng = np.random.default_rng([seed, i])
    w, h = (int(v) for v in rng.integers(320, 641, 2))
    kind = i % 4
    if kind == 1:
        base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((w, h), Image.Resampling.BICUBIC)
    else:
        a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h)
        ramp = (a[None] * (1 - t[:, None]) + b[None] * t[:, None]).astype(np.uint8)
        arr = np.broadcast_to(ramp[None], (h, w, 3)) if len(t) == w else np.broadcast_to(ramp[:, None], (h, w, 3))
        img = Image.fromarray(np.ascontiguousarray(arr))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(0, h - 20))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    if kind == 3:
        text = " ".join(rng.choice(WORDS, int(rng.integers(2, 5))))
        font = ImageFont.load_default(size=int(rng.integers(28, 56)))
        draw.text((int(rng.integers(5, max(6, w // 4))), int(rng.integers(5, max(6, h // 2)))), text,
                  fill=(255, 255, 255) if rng.random() < 0.5 else (0, 0, 0), font=font)
    out = io.BytesIO()
    img.save(out, "JPEG", quality=int(rng.integers(80, 96)))
    return out.getvalue()


def make_drop(directory: Path, n: int, seed: int) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = directory / f"img_{i:06d}.jpg"
        p.write_bytes(make_image(i, seed))
        paths.append(p)
    return paths


# ----------------------------------------------------------------------------------------------------------- bound
_ENGINE = None


def _bound_init() -> None:
    global _ENGINE
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from captioning.ocr import OcrConfig, load_engine

    _ENGINE = load_engine(OcrConfig(threads=1))
    _ENGINE.setup()


def _bound_one(path: str) -> int:
    data = Path(path).read_bytes()
    hashlib.sha256(data).hexdigest()
    img = Image.open(io.BytesIO(data)).convert("RGB")
    return len(_ENGINE.read(img).lines)


def bound_seconds(paths: list[Path]) -> float:
    """Wall seconds of sha256 + decode + one default rapidocr pass per image, 2 processes."""
    with mp.get_context("spawn").Pool(2, initializer=_bound_init) as pool:
        pool.map(_bound_one, [str(paths[0]), str(paths[1])])  # model load out of the timing
        start = time.perf_counter()
        pool.map(_bound_one, [str(p) for p in paths], chunksize=8)
        return time.perf_counter() - start


# ------------------------------------------------------------------------------------------------------- pipeline
class RssTimeline:
    """(time, resident bytes of this process and its descendants: the Ray workers) every 0.2 s."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((time.time(), total))
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def peak(self, start: float, end: float) -> int:
        return max((r for t, r in self.samples if start <= t <= end), default=0)


def step_windows(storage: str, run_ids: set[str]) -> dict[str, list[tuple[float, float]]]:
    """Asset -> [(start, end)] wall-clock windows of its steps, from the Dagster event log."""
    import dagster as dg

    instance = dg.DagsterInstance.get()
    out: dict[str, list[tuple[float, float]]] = {}
    for run_id in run_ids:
        starts = {}
        for entry in instance.all_logs(run_id):
            ev = entry.dagster_event
            if ev is None or not ev.step_key:
                continue
            if ev.event_type_value == "STEP_START":
                starts[ev.step_key] = entry.timestamp
            elif ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE") and ev.step_key in starts:
                out.setdefault(ev.step_key, []).append((starts[ev.step_key], entry.timestamp))
    return out


def run_point(n: int, work: Path, seed: int) -> dict:
    from orchestration.cli import run_pipeline

    drop = work / f"drop_{n}"
    storage = work / f"storage_{n}"
    paths = make_drop(drop, n, seed)
    input_bytes = sum(p.stat().st_size for p in paths)
    config = {"assets": {"exclusion_signals": {}, "ocr_annotations": {}}}
    with RssTimeline() as rss:
        start = time.perf_counter()
        summaries = run_pipeline([str(drop)], str(storage), config, select="*training_shards")
        total = time.perf_counter() - start
    windows = step_windows(str(storage), {s["run_id"] for s in summaries if "run_id" in s})
    stages = {}
    for name in STAGES:
        mats = [s for s in summaries if s.get("asset") == name and "metadata" in s]
        wins = windows.get(name, [])
        wall = sum(e - s for s, e in wins)
        meta = [m["metadata"] for m in mats]
        computed = sum(int(m.get("computed_now", 0) or 0) for m in meta)
        bytes_read = sum(float(m.get("bytes_read_per_image", 0) or 0) * int(m.get("computed_now", 0) or 0)
                         for m in meta)
        stages[name] = {"wall_s": round(wall, 2), "computed": computed,
                        "bytes_read_per_image": round(bytes_read / computed) if computed else None,
                        "peak_rss_mb": round(max((rss.peak(s, e) for s, e in wins), default=0) / 2**20)}
    failed_checks = [s for s in summaries if "check" in s and not s["passed"]]
    bound = bound_seconds(paths)
    shutil.rmtree(storage, ignore_errors=True)
    return {"n": n, "input_mb": round(input_bytes / 2**20, 1), "total_s": round(total, 1), "bound_s": round(bound, 1),
            "stages": stages, "failed_checks": [f"{c['asset']}:{c['check']}" for c in failed_checks]}


def slope(xs: list[float], ys: list[float]) -> float | None:
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys, strict=True) if x > 0 and y > 0]
    if len(pts) < 2:
        return None
    lx, ly = np.array([p[0] for p in pts]), np.array([p[1] for p in pts])
    return float(np.polyfit(lx, ly, 1)[0])


def report(points: list[dict]) -> str:
    ns = [p["n"] for p in points]
    lines = ["| stage | " + " | ".join(f"s/image N={n}" for n in ns) + " | " +
             " | ".join(f"bytes/image N={n}" for n in ns) + " | peak RSS MB (max N) | growth exponent |",
             "| --- |" + " --- |" * (2 * len(ns) + 2)]
    for name in STAGES:
        per = [p["stages"][name]["wall_s"] / p["n"] for p in points]
        byts = [p["stages"][name]["bytes_read_per_image"] for p in points]
        exp = slope(ns, [p["stages"][name]["wall_s"] for p in points])
        lines.append(f"| {name} | " + " | ".join(f"{v:.4f}" for v in per) + " | " +
                     " | ".join("-" if b is None else f"{b:,}" for b in byts) +
                     f" | {points[-1]['stages'][name]['peak_rss_mb']} | {'-' if exp is None else f'{exp:.2f}'} |")
    totals = [p["total_s"] for p in points]
    lines.append("")
    lines.append("| N | end to end s | bound s (sha256 + decode + rapidocr, 2 procs) | ratio bound/pipeline |")
    lines.append("| --- | --- | --- | --- |")
    for p in points:
        lines.append(f"| {p['n']} | {p['total_s']} | {p['bound_s']} | {p['bound_s'] / p['total_s']:.2f} |")
    if len(points) >= 2:
        a, b = points[0], points[-1]
        marginal = (b["total_s"] - a["total_s"]) / (b["n"] - a["n"])
        bound_marginal = (b["bound_s"] - a["bound_s"]) / (b["n"] - a["n"])
        lines.append("")
        lines.append(f"Marginal seconds per image (N={a['n']} -> {b['n']}): pipeline {marginal:.4f}, bound "
                     f"{bound_marginal:.4f}, ratio {bound_marginal / marginal:.2f}; end-to-end growth exponent "
                     f"{slope(ns, totals):.2f}.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "bench" / "pipeline_scale.json"))
    args = parser.parse_args()
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    points = []
    with tempfile.TemporaryDirectory(prefix="pipeline_scale_") as tmp:
        home = Path(tmp) / "dagster_home"  # one Dagster instance for every point (storages are removed after each)
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        os.environ["DAGSTER_HOME"] = str(home)
        for n in args.sizes:
            point = run_point(n, Path(tmp), args.seed)
            points.append(point)
            print(json.dumps(point), flush=True)
            Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                                  "cpus": os.cpu_count(), "points": points}, indent=1))
    print(report(points))


if __name__ == "__main__":
    main()
