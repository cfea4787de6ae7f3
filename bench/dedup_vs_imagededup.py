"""Our perceptual dedup (orientation-search pHash) against imagededup's PHash, side by side, same files.

    .venv/bin/python bench/dedup_vs_imagededup.py [--n 10000] [--threshold 4 6 8 10] [--seed 0] [--processes 2]
        [--repeats 1] [--corpus ../shared/data/corpus_dev/images] [--data-dir DIR] [--keep]
        [--out bench/results/dedup_vs_imagededup.md]

Data ("real-derived"): the real photos of `corpus_dev` are cut into many random crops (25-60% of each side, at
random positions, resized to a 256-512 px long side), so most images are genuinely different pictures. For about
one crop in ten a planted group is made: the crop plus one transformed copy (every fifth group: two copies, each
with a different transform). Transforms: JPEG re-encode at q 30-90, resize 50%, crop 10%, horizontal flip,
90-degree rotation, Gaussian blur, brightness + contrast, grayscale. Everything is written as JPEG q95 into one
directory (a fresh temp dir under /tmp unless --data-dir; deleted at the end unless --keep or --data-dir).
Deterministic for a given --seed and --n.

Ground truth, pairwise: positive = two members of one planted group. Excluded (ambiguous) = two crops of the same
source photo whose crop boxes overlap with IoU > 0.3: they show much of the same scene, neither label is clean.
Every other pair is negative. Precision = TP / (TP + FP) over predicted pairs that are not excluded; recall is over
the planted positive pairs. Pairs are scored one by one (no union-find / transitive closure in either method).

Methods, each in a fresh Python process (so one library's imports do not inflate the other's memory), both reading
the same files from disk and both using a --processes pool for encoding:

- ours: read bytes -> `curation.image_io.load_rgb` -> `curation.features._reduce` ->
  `curation.hashing.perceptual_hashes` (the pipeline computes pHash, dHash and the pHash of 8 orientations in that
  one call; all of that is timed, as in the pipeline), then `curation.dedup.orientation_pairs` (the best of one
  image's 8 orientation hashes against the other's upright hash) with distance <= T. "ours (plain pHash)" reuses
  the same encode with the upright full-resolution `phash`; it is a quality reference that isolates what the
  orientation search buys.
- imagededup: `PHash().encode_images(image_dir, num_enc_workers=P)` and
  `find_duplicates(encoding_map, max_distance_threshold=T, num_dist_workers=P)` (its default search, the Cython
  brute force; also <= T).

Encode and search are timed separately (search once per T); total = encode + search(T). With --repeats R the
methods alternate in ABBA order and the fastest repeat of each phase is kept (the machine may be shared); CPU
seconds (user + sys of the process tree) are reported too, as they move much less with outside load. Peak memory
is sampled every 0.1 s in a thread of the measured process over it and all its children: the sum of RSS (counts
pages shared by forked workers once per process, so it overstates a fork pool) and the sum of PSS (shares split
among the processes that map them; the fair "how much RAM does this take" number). Prints a markdown report and
writes it to --out.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import logging
import multiprocessing as mp
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import psutil
from PIL import Image, ImageEnhance, ImageFilter

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRANSFORMS = ["jpeg_q30_90", "resize_50", "crop_10", "hflip", "rot90", "blur", "bright_contrast", "grayscale"]
AMBIGUOUS_IOU = 0.3
DATA_VERSION = "dvi-1"  # bump when the generator changes, so a reused --data-dir is regenerated
METHODS = ("ours", "imagededup")


# ---------------------------------------------------------------------------------------------------------------
# Data set


def plan_dataset(sources: list[str], n: int, seed: int) -> list[dict]:
    """Every image to write, indexed by file id: crop box, output size, planted group and transform parameters.

    All randomness is drawn here, in one place, so rendering in a pool is deterministic whatever the scheduling.
    """
    rng = np.random.default_rng(seed)
    n_groups = n // 10
    n_variants = n_groups + n_groups // 5  # every fifth group gets a second copy
    n_base = n - n_variants
    # Round-robin over the sources (shuffled) keeps every photo equally represented.
    src = rng.permutation(np.arange(n_base) % len(sources))
    fw, fh = rng.uniform(0.25, 0.60, n_base), rng.uniform(0.25, 0.60, n_base)
    x0, y0 = rng.uniform(0, 1 - fw), rng.uniform(0, 1 - fh)
    long_side = rng.integers(256, 513, n_base)
    base = [
        {"role": "base", "source": int(src[k]), "box": [float(x0[k]), float(y0[k]), float(x0[k] + fw[k]),
                                                        float(y0[k] + fh[k])],
         "long": int(long_side[k]), "group": -1, "transform": None, "param": None}
        for k in range(n_base)
    ]
    planted = rng.choice(n_base, n_groups, replace=False)
    variants = []
    for g, k in enumerate(planted.tolist()):
        base[k]["group"] = g
        for _ in range(2 if g % 5 == 0 else 1):
            # Round robin over the transforms: equal counts, and the two copies of a group always differ.
            name = TRANSFORMS[len(variants) % len(TRANSFORMS)]
            variants.append({**base[k], "role": "variant", "transform": name, "param": _draw_param(name, rng)})
    items = base + variants
    # Shuffle the file order so that a file id says nothing about its group.
    order = rng.permutation(len(items))
    return [items[i] for i in order]


def _draw_param(name: str, rng: np.random.Generator) -> list[float]:
    if name == "jpeg_q30_90":
        return [float(rng.integers(30, 91))]
    if name == "crop_10":
        return [float(rng.uniform(0, 0.1)), float(rng.uniform(0, 0.1))]  # left / top margin; 90% of each side kept
    if name == "rot90":
        return [float(rng.choice([90, 270]))]
    if name == "blur":
        return [float(rng.uniform(1.0, 2.5))]
    if name == "bright_contrast":
        # Away from 1.0 on both sides: a +-3% change would be a trivially easy "positive".
        s = rng.choice([-1.0, 1.0], 2)
        return [float(1 + s[0] * rng.uniform(0.15, 0.3)), float(1 + s[1] * rng.uniform(0.15, 0.3))]
    return []


_SOURCES: dict[str, Image.Image] = {}


def _source(path: str) -> Image.Image:
    # Decoded once per pool worker: a 1440 px photo takes ~20 ms to decode, a crop ~1 ms.
    if path not in _SOURCES:
        from curation.image_io import load_rgb

        _SOURCES[path] = load_rgb(Path(path).read_bytes())
    return _SOURCES[path]


def render(job: tuple[str, list[str], dict]) -> int:
    """Write one planned image as JPEG q95; returns its size in bytes."""
    out_path, sources, item = job
    src = _source(sources[item["source"]])
    w, h = src.size
    x0, y0, x1, y1 = item["box"]
    box = (round(x0 * w), round(y0 * h), max(round(x1 * w), round(x0 * w) + 1), max(round(y1 * h), round(y0 * h) + 1))
    cw, ch = box[2] - box[0], box[3] - box[1]
    scale = item["long"] / max(cw, ch)
    img = src.crop(box).resize((max(1, round(cw * scale)), max(1, round(ch * scale))), Image.Resampling.LANCZOS)
    if item["transform"]:
        img = apply_transform(img, item["transform"], item["param"])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    Path(out_path).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def apply_transform(img: Image.Image, name: str, param: list[float]) -> Image.Image:
    """One planted near-duplicate transform."""
    w, h = img.size
    if name == "jpeg_q30_90":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=int(param[0]))
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    if name == "resize_50":
        return img.resize((max(1, w // 2), max(1, h // 2)), Image.Resampling.LANCZOS)
    if name == "crop_10":
        left, top = round(param[0] * w), round(param[1] * h)
        return img.crop((left, top, left + round(0.9 * w), top + round(0.9 * h)))
    if name == "hflip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if name == "rot90":
        return img.transpose(Image.Transpose.ROTATE_90 if param[0] == 90 else Image.Transpose.ROTATE_270)
    if name == "blur":
        return img.filter(ImageFilter.GaussianBlur(param[0]))
    if name == "bright_contrast":
        return ImageEnhance.Contrast(ImageEnhance.Brightness(img).enhance(param[0])).enhance(param[1])
    if name == "grayscale":
        return img.convert("L")
    raise ValueError(name)


def build_dataset(corpus: Path, out_dir: Path, n: int, seed: int, processes: int) -> tuple[list[dict], dict]:
    """Plan and write the images (or reuse a matching earlier build in out_dir); returns (items, build facts)."""
    sources = sorted(str(p) for p in corpus.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    manifest = out_dir / "manifest.json"
    key = {"version": DATA_VERSION, "n": n, "seed": seed, "sources": [Path(s).name for s in sources]}
    if manifest.exists():
        saved = json.loads(manifest.read_text())
        if saved["key"] == key:
            return saved["items"], {**saved["facts"], "reused": True}
    items = plan_dataset(sources, n, seed)
    images = out_dir / "images"
    if images.exists():
        shutil.rmtree(images)
    images.mkdir(parents=True)
    t0 = time.perf_counter()
    jobs = [(str(images / f"{i:05d}.jpg"), sources, item) for i, item in enumerate(items)]
    with mp.Pool(processes) as pool:
        sizes = pool.map(render, jobs, chunksize=64)
    facts = {"n_sources": len(sources), "bytes": int(sum(sizes)), "build_s": time.perf_counter() - t0}
    manifest.write_text(json.dumps({"key": key, "items": items, "facts": facts}))
    return items, {**facts, "reused": False}


def ground_truth(items: list[dict]) -> dict:
    """Positive pair keys (i * n + j, i < j) with a transform label each, and the excluded (ambiguous) keys."""
    n = len(items)
    group = np.array([it["group"] for it in items])
    pos_keys, pos_labels = [], []
    for g in np.unique(group[group >= 0]).tolist():
        members = np.flatnonzero(group == g).tolist()
        for a in range(len(members)):
            for b in range(a + 1, len(members)):
                i, j = members[a], members[b]
                ti, tj = items[i]["transform"], items[j]["transform"]
                pos_keys.append(i * n + j)
                pos_labels.append(tj if ti is None else ti if tj is None else "copy_vs_copy")
    source = np.array([it["source"] for it in items])
    boxes = np.array([it["box"] for it in items])
    amb = []
    for s in np.unique(source).tolist():
        idx = np.flatnonzero(source == s)
        b = boxes[idx]
        # IoU in normalised source coordinates equals IoU in pixels (a per-axis scale changes both areas alike).
        iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
        ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
        inter = iw * ih
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        iou = inter / (area[:, None] + area[None, :] - inter)
        g = group[idx]
        same_group = (g[:, None] == g[None, :]) & (g[:, None] >= 0)
        a, c = np.nonzero(np.triu((iou > AMBIGUOUS_IOU) & ~same_group, k=1))
        amb.append(idx[a].astype(np.int64) * n + idx[c])
    order = np.argsort(pos_keys)
    return {
        "pos_keys": np.asarray(pos_keys, np.int64)[order],
        "pos_labels": np.asarray(pos_labels)[order],
        "amb_keys": np.unique(np.concatenate(amb)),
        "n_pairs": n * (n - 1) // 2,
    }


def score(i: np.ndarray, j: np.ndarray, n: int, truth: dict) -> dict:
    """Pairwise precision / recall of predicted pairs (either order, duplicates allowed) against the truth."""
    keys = np.unique(np.minimum(i, j).astype(np.int64) * n + np.maximum(i, j))
    tp = int(np.isin(keys, truth["pos_keys"]).sum())
    amb = int(np.isin(keys, truth["amb_keys"]).sum())
    fp = len(keys) - tp - amb
    found = np.isin(truth["pos_keys"], keys)
    per = {}
    for label in [*TRANSFORMS, "copy_vs_copy"]:
        mask = truth["pos_labels"] == label
        per[label] = (int(found[mask].sum()), int(mask.sum()))
    return {"pairs": len(keys), "tp": tp, "fp": fp, "ambiguous": amb,
            "precision": tp / (tp + fp) if tp + fp else float("nan"),
            "recall": tp / len(truth["pos_keys"]), "per_transform": per}


# ---------------------------------------------------------------------------------------------------------------
# Measured worker (runs in its own process)


class PeakMemory(threading.Thread):
    """Samples RSS and PSS of this process and all its children; keeps the peak per named phase."""

    def __init__(self, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.interval, self.phase = interval, "idle"
        self.proc = psutil.Process()
        self.peak: dict[str, list[int]] = {}
        self._done = threading.Event()

    def sample(self) -> None:
        rss = pss = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            try:
                m = p.memory_full_info()  # PSS comes from /proc/PID/smaps_rollup: cheap enough at 10 Hz
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue  # a pool worker that exited between listing and reading
            rss, pss = rss + m.rss, pss + m.pss
        cur = self.peak.setdefault(self.phase, [0, 0])
        cur[0], cur[1] = max(cur[0], rss), max(cur[1], pss)

    def switch(self, phase: str) -> None:
        self.sample()  # close the previous phase with a final sample
        self.phase = phase

    def run(self) -> None:
        while not self._done.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._done.set()
        self.join()
        self.sample()


def cpu_seconds() -> float:
    """CPU time of this process plus its reaped children (pool workers are joined, so theirs is included).

    Less sensitive than wall time to other work on the machine: the comparison we can trust under load.
    """
    t = psutil.Process().cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _our_hashes(path: str) -> list[int]:
    """The pipeline's per-image path from bytes on disk: decode, reduce, hash."""
    from curation.features import _reduce
    from curation.hashing import perceptual_hashes
    from curation.image_io import load_rgb

    with open(path, "rb") as f:
        data = f.read()
    h = perceptual_hashes(_reduce(load_rgb(data)))
    return [*h["phash_orientations"], h["phash"]]


def run_worker(method: str, image_dir: Path, thresholds: list[int], processes: int, result: Path) -> None:
    """Encode once, search once per threshold; save timings, memory peaks and the found pairs to `result` (npz)."""
    # Imports happen before any clock starts: library import time is not what we compare.
    if method == "ours":
        from curation.dedup import DedupConfig, orientation_pairs
        from curation.features import _reduce  # noqa: F401  (warm the import so pool workers inherit it)
        from curation.hamming import hamming_pairs
    else:
        from imagededup.methods import PHash

        warnings.filterwarnings("ignore")  # find_duplicates warns that num_enc_workers is unused with a map
        logging.disable(logging.INFO)  # its per-call INFO lines would bury the report
    mem = PeakMemory()
    meta: dict = {"method": method, "rss_after_import": psutil.Process().memory_info().rss, "search_s": {},
                  "search_cpu": {}}
    pairs: dict[str, np.ndarray] = {}
    mem.start()
    mem.switch("encode")
    t0, c0 = time.perf_counter(), cpu_seconds()
    if method == "ours":
        files = sorted(str(p) for p in image_dir.iterdir() if not p.name.startswith("."))
        with mp.Pool(processes) as pool:
            # Same chunking as imagededup's own pool (imap, chunks of 100).
            codes = np.array(list(pool.imap(_our_hashes, files, 100)), dtype=np.uint64).reshape(-1, 9)
        ids = np.array([int(Path(f).stem) for f in files])
    else:
        phasher = PHash(verbose=False)
        enc = phasher.encode_images(image_dir=str(image_dir), num_enc_workers=processes)
    meta["encode_s"], meta["encode_cpu"] = time.perf_counter() - t0, cpu_seconds() - c0
    if method == "imagededup":
        names = list(enc)
        index = {name: int(Path(name).stem) for name in names}
        meta["encoded"] = len(enc)
    else:
        meta["encoded"] = len(codes)
    for t in thresholds:
        mem.switch(f"search_{t}")
        t0, c0 = time.perf_counter(), cpu_seconds()
        if method == "ours":
            # the pipeline's perceptual rule: upright within T, flipped/rotated within the (fixed) rotated bound
            i, j, _ = orientation_pairs(codes[:, :8], t, rotated_threshold=min(t, DedupConfig.rotated_threshold))
        else:
            res = phasher.find_duplicates(encoding_map=enc, max_distance_threshold=t, num_dist_workers=processes)
        meta["search_s"][str(t)], meta["search_cpu"][str(t)] = time.perf_counter() - t0, cpu_seconds() - c0
        # Converting results to index pairs is evaluation, not dedup: outside the clock.
        if method == "ours":
            pairs[f"canonical_{t}"] = np.stack([ids[i], ids[j]])
            mem.switch("reference")
            i, j, _ = hamming_pairs(codes[:, 8], t)  # plain pHash: quality reference only
            pairs[f"plain_{t}"] = np.stack([ids[i], ids[j]])
        else:
            flat = [(index[a], index[b]) for a, dups in res.items() for b in dups]
            pairs[f"canonical_{t}"] = np.array(flat, np.int64).reshape(-1, 2).T
    mem.stop()
    meta["peak"] = mem.peak
    meta["per_image_ms"] = per_image_costs(method, sorted(image_dir.iterdir())[:300])
    np.savez(result, meta=json.dumps(meta), **pairs)


def per_image_costs(method: str, files: list[Path]) -> dict[str, float]:
    """Milliseconds per image, one process, after the timed runs: where the encode time goes (not in the table)."""
    def clock(fn, xs: list) -> tuple[float, list]:
        t0 = time.perf_counter()
        out = [fn(x) for x in xs]
        return (time.perf_counter() - t0) / len(xs) * 1e3, out

    if method == "imagededup":
        from imagededup.methods import PHash

        phasher = PHash(verbose=False)
        return {"encode_image": clock(lambda f: phasher.encode_image(image_file=f), files)[0]}
    import imagehash

    from curation.features import _reduce
    from curation.hashing import perceptual_hashes
    from curation.image_io import load_rgb

    read_ms, datas = clock(Path.read_bytes, files)
    load_ms, rgbs = clock(load_rgb, datas)
    reduce_ms, small = clock(_reduce, rgbs)
    hash_ms, _ = clock(perceptual_hashes, small)
    # What a plain-pHash-only path would pay for hashing, to size the cost of the 17 other hashes.
    phash_ms, _ = clock(lambda im: imagehash.phash(im.convert("L")), small)
    return {"read": read_ms, "load_rgb": load_ms, "_reduce": reduce_ms, "perceptual_hashes": hash_ms,
            "imagehash.phash only": phash_ms}


# ---------------------------------------------------------------------------------------------------------------
# Driver


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gib = psutil.virtual_memory().total / 2**30
    return (f"{platform.node()}: {model}, {os.cpu_count()} logical CPUs ({len(os.sched_getaffinity(0))} usable), "
            f"{gib:.1f} GiB RAM, Python {platform.python_version()}")


def versions() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ["imagededup", "imagehash", "faiss-cpu", "numpy", "Pillow"])


def report(args: argparse.Namespace, items: list[dict], facts: dict, truth: dict, runs: dict, loads: list,
           started: float) -> str:
    n = len(items)
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    n_groups = len({it["group"] for it in items if it["group"] >= 0})
    n_var = sum(it["role"] == "variant" for it in items)
    n_pos, n_amb = len(truth["pos_keys"]), len(truth["amb_keys"])
    lines = [
        f"## Perceptual dedup: ours (orientation-search pHash) vs imagededup PHash, {n} images",
        "",
        f"- Date: {now}. Machine: {machine()}.",
        f"- Versions: {versions()}. Pools: {args.processes} processes for encoding in both methods.",
        f"- Load average (1 min) before/after each measured run, in order ({args.repeats} repeat(s), ABBA; times "
        "are the fastest repeat per phase, CPU s = user + sys of the process tree): "
        + ", ".join(f"{m} {a:.2f}/{b:.2f}" for m, a, b in loads) + ". Encode wall s per repeat: "
        + "; ".join(f"{m} " + ", ".join(f"{x:.1f}" for x in runs[m]["meta"]["encode_runs"]) for m in METHODS)
        + ".",
        f"- Data: {facts['n_sources']} real photos of corpus_dev -> {n - n_var} random crops + {n_var} planted copies "
        f"in {n_groups} groups; {facts['bytes'] / 2**20:.0f} MiB of JPEG q95"
        + (" (reused build)" if facts["reused"] else f", built in {facts['build_s']:.0f} s") + f"; seed {args.seed}.",
        f"- Pairs: {n_pos} positive, {n_amb} excluded as ambiguous (same photo, crop IoU > {AMBIGUOUS_IOU}), "
        f"{truth['n_pairs'] - n_pos - n_amb} negative.",
        "- Rule: duplicate iff pHash Hamming distance <= T (both methods); pairwise, no transitive closure. "
        "Total = encode + search(T). Peak memory: whole process tree, RSS sum / PSS sum (see docstring).",
        "",
        "| method | T | encode s | search s | total s | images/s | total vs imagededup | CPU s | peak RSS MiB | "
        "peak PSS MiB | pairs | TP | FP | amb. | precision | recall |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    scores: dict[tuple[str, int], dict] = {}
    for t in args.threshold:
        idd_total = runs["imagededup"]["meta"]["encode_s"] + runs["imagededup"]["meta"]["search_s"][str(t)]
        for label, method, key in [("ours", "ours", "canonical"), ("imagededup", "imagededup", "canonical"),
                                   ("ours, plain pHash (quality ref.)", "ours", "plain")]:
            meta, found = runs[method]["meta"], runs[method]["pairs"][f"{key}_{t}"]
            s = scores[(label, t)] = score(found[0], found[1], n, truth)
            quality = (f"{s['pairs']} | {s['tp']} | {s['fp']} | {s['ambiguous']} | {s['precision']:.3f} | "
                       f"{s['recall']:.3f} |")
            if key == "plain":
                lines.append(f"| {label} | {t} | | | | | | | | | " + quality)
                continue
            enc, srch = meta["encode_s"], meta["search_s"][str(t)]
            peaks = [meta["peak"][p] for p in ("encode", f"search_{t}")]
            rss, pss = max(p[0] for p in peaks) / 2**20, max(p[1] for p in peaks) / 2**20
            ratio = f"{(enc + srch) / idd_total:.2f}x" if method == "ours" else "1.00x"
            cpu = meta["encode_cpu"] + meta["search_cpu"][str(t)]
            lines.append(f"| {label} | {t} | {enc:.1f} | {srch:.2f} | {enc + srch:.1f} | {n / (enc + srch):.0f} | "
                         f"{ratio} | {cpu:.1f} | {rss:.0f} | {pss:.0f} | " + quality)
    rt = [t for t in (6, 10) if t in args.threshold] or args.threshold[:2]
    labels = ["ours", "imagededup", "ours, plain pHash (quality ref.)"]
    short = {"ours": "ours", "imagededup": "imagededup", "ours, plain pHash (quality ref.)": "ours plain"}
    lines += ["", "Recall per planted transform (pairs original-copy; copy_vs_copy = two copies of one original):", "",
              "| transform | pairs | " + " | ".join(f"{short[m]} T={t}" for t in rt for m in labels) + " |",
              "|---|--:|" + "--:|" * (len(rt) * len(labels))]
    for label in [*TRANSFORMS, "copy_vs_copy"]:
        total = scores[(labels[0], rt[0])]["per_transform"][label][1]
        cells = [scores[(m, t)]["per_transform"][label] for t in rt for m in labels]
        lines.append(f"| {label} | {total} | " + " | ".join(f"{f / max(c, 1):.3f}" for f, c in cells) + " |")
    imports = ", ".join(f"{m} {runs[m]['meta']['rss_after_import'] / 2**20:.0f} MiB" for m in METHODS)
    costs = "; ".join(f"{m}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[m]["meta"]["per_image_ms"].items())
                      for m in METHODS)
    lines += ["", f"Encode cost per image, one process, first 300 files, ms (not part of the table): {costs}.",
              f"RSS of the measured process right after imports (before any work): {imports}. "
              f"Wall time of this whole run: {time.perf_counter() - started:.0f} s."]
    return "\n".join(lines)


def merge_runs(runs: list[dict], n: int) -> dict:
    """Repeats of one method -> one: fastest time per phase (the least disturbed), highest memory peak."""
    for run in runs:
        if run["meta"]["encoded"] != n:
            raise RuntimeError(f"{run['meta']['method']} encoded {run['meta']['encoded']} of {n} images")
        for key, pairs in run["pairs"].items():
            if not np.array_equal(pairs, runs[0]["pairs"][key]):
                raise RuntimeError(f"{run['meta']['method']}: {key} differs between repeats")
    metas = [r["meta"] for r in runs]
    meta = dict(metas[0])
    for key in ("encode_s", "encode_cpu"):
        meta[key] = min(m[key] for m in metas)
    for key in ("search_s", "search_cpu", "per_image_ms"):
        meta[key] = {k: min(m[key][k] for m in metas) for k in metas[0][key]}
    meta["peak"] = {k: [max(m["peak"][k][i] for m in metas) for i in (0, 1)] for k in metas[0]["peak"]}
    meta["encode_runs"] = [m["encode_s"] for m in metas]
    return {"meta": meta, "pairs": runs[0]["pairs"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="images in the benchmark set (default 10000)")
    ap.add_argument("--threshold", type=int, nargs="+", default=[4, 6, 8, 10], help="Hamming thresholds T (<= T)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=1, help="measured runs per method, ABBA order; best time kept")
    ap.add_argument("--processes", type=int, default=2, help="pool size for encoding, both methods (default 2)")
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared/data/corpus_dev/images")
    ap.add_argument("--data-dir", type=Path, help="build (or reuse a matching build) here and keep it")
    ap.add_argument("--keep", action="store_true", help="keep the temp data dir")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/dedup_vs_imagededup.md")
    ap.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)  # internal: one measured run
    ap.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.threshold = sorted(set(args.threshold))
    if args.worker:
        run_worker(args.worker, args.data_dir / "images", args.threshold, args.processes, args.result)
        return

    started = time.perf_counter()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="dedup_vs_imagededup_", dir="/tmp"))
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        items, facts = build_dataset(args.corpus, data_dir, args.n, args.seed, args.processes)
        truth = ground_truth(items)
        every: dict[str, list[dict]] = {m: [] for m in METHODS}
        loads = []
        for r in range(args.repeats):
            # ABBA order: a slow drift of the machine (another job starting or ending) hits both methods alike.
            for method in METHODS if r % 2 == 0 else METHODS[::-1]:
                result = data_dir / f"result_{method}_{r}.npz"
                before = os.getloadavg()[0]
                cmd = [sys.executable, __file__, "--worker", method, "--data-dir", str(data_dir), "--processes",
                       str(args.processes), "--result", str(result), "--threshold", *map(str, args.threshold)]
                subprocess.run(cmd, check=True)
                loads.append((method, before, os.getloadavg()[0]))
                with np.load(result) as z:
                    every[method].append({"meta": json.loads(str(z["meta"])),
                                          "pairs": {k: z[k] for k in z.files if k != "meta"}})
        runs = {m: merge_runs(every[m], len(items)) for m in METHODS}
        text = report(args, items, facts, truth, runs, loads, started)
    finally:
        if not args.data_dir and not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
