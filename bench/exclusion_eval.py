"""Exclusion filters measured on real files: AI-image recall / false positives, per-signal cost, artifact thresholds.

    .venv/bin/python bench/exclusion_eval.py [--shared ../shared/data]

1. AI-generated detection on `ai_dev` (14 AI images carrying generator metadata or a stealth payload, 11 real camera
   photos) plus the 37 real images of `corpus_dev`: every signal except the learned probe, at the shipped defaults.
2. Cost per image of each signal (metadata, stealth, C2PA, watermark, artifact/complexity measures).
3. Artifact thresholds: JPEG blocking on `corpus_dev` re-encoded at several qualities, sharp and blurred (blur must
   never look like blocking); borders on letterboxed / pillarboxed / framed copies against the originals and against
   text on a plain background.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from curation.ai_metadata import metadata_signals, stealth_signals
from curation.exclusion import ExclusionConfig, assess
from curation.image_io import ProbeLimits, load_rgb, probe_image
from curation.provenance import c2pa_signals, sdxl_watermark
from curation.quality import QualityConfig, blockiness, border_fraction, quality_signals

REPO = Path(__file__).resolve().parents[1]


def _images(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg", ".webp"})


def ai_detection(shared: Path) -> None:
    labels = {r["file"]: r["label"] for r in json.loads((shared / "ai_dev" / "labels.json").read_text())}
    rows = [(shared / "ai_dev" / f, label) for f, label in labels.items()]
    rows += [(p, "real") for p in _images(shared / "corpus_dev" / "images")]
    config = ExclusionConfig()
    found = {"ai": [0, 0], "real": [0, 0]}
    misses = []
    costs: dict[str, list[float]] = {k: [] for k in ("decode", "metadata", "stealth", "c2pa", "watermark", "quality")}
    for path, label in rows:
        data = path.read_bytes()
        t = time.perf_counter()
        facts = probe_image(data, ProbeLimits(min_side=1), with_metadata=True)
        rgb = load_rgb(data)
        costs["decode"].append(time.perf_counter() - t)
        meta = {"embedded": facts.metadata, "sidecar": {}}
        t = time.perf_counter()
        metadata_signals(meta)
        costs["metadata"].append(time.perf_counter() - t)
        t = time.perf_counter()
        with Image.open(io.BytesIO(data)) as original:
            if original.mode in ("RGB", "RGBA"):
                stealth_signals(original.copy())
        costs["stealth"].append(time.perf_counter() - t)
        t = time.perf_counter()
        c2pa_signals(data, facts.format)
        costs["c2pa"].append(time.perf_counter() - t)
        t = time.perf_counter()
        sdxl_watermark(rgb)
        costs["watermark"].append(time.perf_counter() - t)
        t = time.perf_counter()
        quality_signals(rgb)
        costs["quality"].append(time.perf_counter() - t)
        row, _ = assess("-", str(path), data, facts.format, meta, None, None, config)
        found[label][0] += int(row["ai_generated"])
        found[label][1] += 1
        if row["ai_generated"] != (label == "ai"):
            misses.append((path.name, label, row["ai_signals"]))
    print("### AI-generated detection (all signals but the learned probe, shipped defaults)\n")
    print("| set | images | flagged AI | rate |")
    print("| --- | ---: | ---: | ---: |")
    ai_seen, ai_total = found["ai"]
    print(f"| AI-generated (ai_dev/ai) | {ai_total} | {ai_seen} | {ai_seen / ai_total:.2f} |")
    print(f"| real (ai_dev/real + corpus_dev) | {found['real'][1]} | {found['real'][0]} | "
          f"{found['real'][0] / found['real'][1]:.2f} |")
    print(f"\nerrors: {misses or 'none'}\n")
    print("### Cost per image (ms, mean over the same images; images of 1x1 to 2048x2048 px)\n")
    print("| step | mean ms | max ms |")
    print("| --- | ---: | ---: |")
    for name, values in costs.items():
        print(f"| {name} | {1000 * np.mean(values):.1f} | {1000 * np.max(values):.1f} |")


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return Image.open(buf).convert("RGB")


def artifact_thresholds(shared: Path) -> None:
    config = QualityConfig()
    photos = [Image.open(p).convert("RGB") for p in _images(shared / "corpus_dev" / "images")]
    for img in photos:
        img.thumbnail((1024, 1024))
    print("\n### JPEG blocking (flagged share; rule: ratio > "
          f"{config.max_blockiness} and excess > {config.min_blocking_excess} grey levels)\n")
    print("| JPEG quality | sharp: flagged | sharp: median ratio / excess | blurred r3: flagged | "
          "blurred: median ratio / excess |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for quality in (10, 25, 40, 60, 85, 95):
        cells = []
        for blur in (False, True):
            vals = []
            for img in photos:
                src = img.filter(ImageFilter.GaussianBlur(3)) if blur else img
                vals.append(blockiness(np.asarray(_jpeg(src, quality).convert("L"), np.float32)))
            arr = np.array(vals)
            flagged = ((arr[:, 0] > config.max_blockiness) & (arr[:, 1] > config.min_blocking_excess)).mean()
            cells += [f"{flagged:.2f}", f"{np.median(arr[:, 0]):.2f} / {np.median(arr[:, 1]):.2f}"]
        print(f"| {quality} | " + " | ".join(cells) + " |")

    def letterbox(img: Image.Image, bar: float, vertical: bool, colour=(0, 0, 0)) -> Image.Image:
        w, h = img.size
        if vertical:
            canvas = Image.new("RGB", (w, int(h * (1 + 2 * bar))), colour)
            canvas.paste(img, (0, int(h * bar)))
        else:
            canvas = Image.new("RGB", (int(w * (1 + 2 * bar)), h), colour)
            canvas.paste(img, (int(w * bar), 0))
        return canvas

    def poster(seed: int) -> Image.Image:
        rng = np.random.default_rng(seed)
        img = Image.new("RGB", (768, 512), tuple(int(c) for c in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(img)
        font = ImageFont.load_default(size=int(rng.integers(28, 56)))
        for i in range(3):
            draw.text((int(rng.integers(20, 200)), 80 + 120 * i), "Sample headline text", fill=(255, 255, 255),
                      font=font)
        return img

    print(f"\n### Borders (share flagged; rule: border_fraction > {config.max_border_fraction})\n")
    print("| set | images | flagged | median border_fraction |")
    print("| --- | ---: | ---: | ---: |")
    sets = {
        "originals": photos,
        "letterbox, bars 2x15% (black)": [letterbox(p, 0.15, True) for p in photos],
        "pillarbox, bars 2x15% (black)": [letterbox(p, 0.15, False) for p in photos],
        "letterbox, bars 2x8% (white)": [letterbox(p, 0.08, True, (255, 255, 255)) for p in photos],
        "text on a plain background": [poster(s) for s in range(20)],
    }
    for name, images in sets.items():
        fractions = np.array([border_fraction(np.asarray(i.convert("L"), np.float32)) for i in images])
        print(f"| {name} | {len(images)} | {(fractions > config.max_border_fraction).mean():.2f} | "
              f"{np.median(fractions):.3f} |")


def small_text(shared: Path) -> None:
    from curation.text_density import small_text_fraction, text_lines

    config = QualityConfig()
    sets = {
        "photos (corpus_dev + ai_dev/real)": [*_images(shared / "corpus_dev" / "images"),
                                              *_images(shared / "ai_dev" / "real")],
        "receipt photos (ocr_dev)": _images(shared / "ocr_dev" / "receipts_wildreceipt"),
    }
    print(f"\n### Text illegible at a stage (rule: small_text_<stage> > {config.max_small_text})\n")
    print("| set | images | max small_text_256 | median | ineligible at 256 | ineligible at 512 | detector ms |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, paths in sets.items():
        values, values512, costs = [], [], []
        for path in paths:
            rgb = load_rgb(path.read_bytes())
            t = time.perf_counter()
            lines = text_lines(rgb)
            costs.append(time.perf_counter() - t)
            values.append(small_text_fraction(lines, rgb.width, rgb.height, 256))
            values512.append(small_text_fraction(lines, rgb.width, rgb.height, 512))
        v, v5 = np.array(values), np.array(values512)
        print(f"| {name} | {len(v)} | {v.max():.4f} | {np.median(v):.4f} | {(v > config.max_small_text).sum()} | "
              f"{(v5 > config.max_small_text).sum()} | {1000 * np.mean(costs):.0f} |")


def size_and_aspect(shared: Path) -> None:
    """Why 0.75 x the first stage: how close an upsampled smaller image gets to a native one at that stage."""
    photos = [Image.open(p).convert("RGB") for p in _images(shared / "corpus_dev" / "images")]
    aspects = np.array([max(p.size) / min(p.size) for p in photos])
    print(f"\n### Size and aspect\n\naspect ratio of the real photos: max {aspects.max():.2f}, p95 "
          f"{np.percentile(aspects, 95):.2f} (bound {QualityConfig().max_aspect})\n")
    print("| square-equivalent side, upsampled to 256 | PSNR vs native 256, median | min |")
    print("| ---: | ---: | ---: |")
    for side in (128, 160, 192, 224):
        psnr = []
        for img in photos:
            w, h = img.size
            k = 256 / np.sqrt(w * h)
            ref = np.asarray(img.resize((round(w * k), round(h * k)), Image.Resampling.LANCZOS), np.float32)
            k2 = side / np.sqrt(w * h)
            small = img.resize((max(1, round(w * k2)), max(1, round(h * k2))), Image.Resampling.LANCZOS)
            up = np.asarray(small.resize(ref.shape[1::-1], Image.Resampling.BICUBIC), np.float32)
            psnr.append(10 * np.log10(255**2 / max(float(np.mean((up - ref) ** 2)), 1e-6)))
        print(f"| {side} | {np.median(psnr):.1f} dB | {np.min(psnr):.1f} dB |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs; {time.strftime('%Y-%m-%d')}\n")
    ai_detection(args.shared)
    artifact_thresholds(args.shared)
    small_text(args.shared)
    size_and_aspect(args.shared)


if __name__ == "__main__":
    main()
