"""Choose `curation.provenance.WATERMARK_MIN_BIT_ACCURACY` (SDXL `dwtDct` watermark) by measurement on real photos.

    .venv/bin/python bench/watermark_fpr.py [--data ../shared/data] [--sigmas 5] [--max-null-fp 1e-6] [--with-svd]

Images: the 37 real photos of `corpus_dev/images` and the camera JPEGs of `ai_dev/real` (never `eval`), decoded
with the pipeline's `load_rgb`. For each one:

- unmarked: the bit accuracy `sdxl_watermark` reports on the photo itself (the false-positive side);
- marked: the photo with SDXL's 48 bits embedded by `imwatermark` (`dwtDct`, uint8 BGR), decoded losslessly and
  after a JPEG re-encode at quality 90 and 75, each with Pillow's default 4:2:0 chroma subsampling and with 4:4:4
  (the mark lives in the U chroma channel, so subsampling is what erases it);
- diffusers-style: the same embed run on a float32 array, rounded to uint8 afterwards, which is what diffusers'
  `StableDiffusionXLWatermarker` and generative-models do with real SDXL outputs (OpenCV's float YUV uses a chroma
  offset of 0.5 instead of 128, so the mark read back from 8-bit pixels is weaker, on some images inverted);
- with `--with-svd`, a `dwtDctSvd` round trip for comparison (SDXL does not use it).

The threshold is the largest of (a) the lowest bit count above every unmarked photo (zero false positives here),
(b) mean + `--sigmas` x std of the unmarked accuracies and (c) the lowest bit count that 48 independent fair bits
reach with probability <= `--max-null-fp`, each rounded up to a whole bit. (c) is there because the unmarked
distribution is not one bell: low-chroma photos decode to a constant word (all 0 -> 21/48, all 1 -> 27/48), which
shrinks the sample std, while colourful photos decode to noise that follows the null model. Prints markdown
(thresholds with precision/recall, per-size decode cost, per-photo accuracies). Takes ~1 min on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import io
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
from imwatermark import WatermarkDecoder, WatermarkEncoder
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from curation.image_io import IMAGE_EXTENSIONS, load_rgb  # noqa: E402
from curation.provenance import (  # noqa: E402
    SDXL_WATERMARK_BITS,
    WATERMARK_MIN_BIT_ACCURACY,
    WATERMARK_MIN_PIXELS,
    sdxl_watermark,
)

N_BITS = len(SDXL_WATERMARK_BITS)
CONDITIONS = ("lossless", "jpeg_q90", "jpeg_q90_444", "jpeg_q75", "jpeg_q75_444", "diffusers_float")


@dataclass
class Row:
    name: str
    size: tuple[int, int]
    unmarked: float | None
    marked: dict[str, float | None] = field(default_factory=dict)
    svd: float | None = None
    decode_ms: list[float] = field(default_factory=list)


def list_images(data: Path) -> list[Path]:
    roots = [data / "corpus_dev" / "images", data / "ai_dev" / "real"]
    return sorted(p for r in roots for p in r.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def timed_accuracy(rgb: Image.Image, row: Row) -> float | None:
    t0 = time.perf_counter()
    out = sdxl_watermark(rgb)
    if out["bit_accuracy"] is not None:
        row.decode_ms.append((time.perf_counter() - t0) * 1e3)
    return out["bit_accuracy"]


def jpeg(rgb: Image.Image, quality: int, subsampling: int = 2) -> Image.Image:
    buf = io.BytesIO()
    rgb.save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


def bgr_to_rgb(bgr: np.ndarray) -> Image.Image:
    return Image.fromarray(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))


def measure(path: Path, encoder: WatermarkEncoder, with_svd: bool) -> Row:
    rgb = load_rgb(path.read_bytes())
    row = Row(name=str(path.relative_to(path.parents[1])), size=rgb.size, unmarked=None)
    row.unmarked = timed_accuracy(rgb, row)
    if rgb.size[0] * rgb.size[1] < WATERMARK_MIN_PIXELS:
        return row  # imwatermark cannot embed either: no positive copy of this photo
    bgr = cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)
    marked = bgr_to_rgb(encoder.encode(bgr, "dwtDct"))
    row.marked["lossless"] = timed_accuracy(marked, row)
    row.marked["jpeg_q90"] = timed_accuracy(jpeg(marked, 90), row)
    row.marked["jpeg_q90_444"] = timed_accuracy(jpeg(marked, 90, subsampling=0), row)
    row.marked["jpeg_q75"] = timed_accuracy(jpeg(marked, 75), row)
    row.marked["jpeg_q75_444"] = timed_accuracy(jpeg(marked, 75, subsampling=0), row)
    as_float = encoder.encode(bgr.astype(np.float32), "dwtDct")
    saved = np.clip(np.rint(as_float), 0, 255).astype(np.uint8)  # as diffusers' output is quantised on save
    row.marked["diffusers_float"] = timed_accuracy(bgr_to_rgb(saved), row)
    if with_svd:
        svd = encoder.encode(bgr, "dwtDctSvd")
        bits = WatermarkDecoder("bits", N_BITS).decode(svd, "dwtDctSvd")
        row.svd = float(np.mean(np.asarray(bits, dtype=bool) == np.asarray(SDXL_WATERMARK_BITS, dtype=bool)))
    return row


def null_tail(k: int) -> float:
    """P(at least k of 48 independent fair bits match): the false-positive rate if real photos decoded to noise."""
    return sum(math.comb(N_BITS, i) for i in range(k, N_BITS + 1)) / 2**N_BITS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--sigmas", type=float, default=5.0, help="safety margin above the unmarked mean, in std")
    ap.add_argument("--max-null-fp", type=float, default=1e-6,
                    help="highest acceptable rate of an unmarked image decoding to noise that reaches the threshold")
    ap.add_argument("--with-svd", action="store_true", help="also round-trip dwtDctSvd (slow on large photos)")
    args = ap.parse_args()

    started = time.perf_counter()
    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(SDXL_WATERMARK_BITS))
    paths = list_images(args.data)
    rows = [measure(p, encoder, args.with_svd) for p in paths]

    unmarked = [r.unmarked for r in rows if r.unmarked is not None]
    too_small = [r for r in rows if r.unmarked is None]
    positives = [r for r in rows if r.marked]
    mean, std = statistics.mean(unmarked), statistics.stdev(unmarked)
    max_k = round(max(unmarked) * N_BITS)
    k_zero_fp = max_k + 1
    k_margin = math.ceil(round((mean + args.sigmas * std) * N_BITS, 9))
    k_null = min(k for k in range(N_BITS + 1) if null_tail(k) <= args.max_null_fp)
    k_chosen = max(k_zero_fp, k_margin, k_null)

    out = ["# SDXL watermark (`dwtDct`, 48 bits): false positives on real photos, recall on marked copies", ""]
    out.append(
        f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"invisible-watermark {version('invisible-watermark')}, opencv {cv2.__version__}. "
        f"Date: {datetime.date.today().isoformat()}. Runtime: {time.perf_counter() - started:.0f} s."
    )
    out.append("")
    out.append(
        f"Photos: {len(rows)} ({len(unmarked)} decodable; {len(too_small)} below {WATERMARK_MIN_PIXELS} px: "
        f"{', '.join(f'{r.name} {r.size[0]}x{r.size[1]}' for r in too_small) or 'none'}); "
        f"marked copies: {len(positives)} per condition."
    )
    out.append("")
    out.append("## Unmarked photos (bit accuracy against SDXL's message)")
    out.append("")
    hist: dict[int, int] = {}
    for a in unmarked:
        hist[round(a * N_BITS)] = hist.get(round(a * N_BITS), 0) + 1
    out.append(
        f"mean {mean:.3f}, std {std:.3f}, min {min(unmarked):.3f}, median {statistics.median(unmarked):.3f}, "
        f"max {max(unmarked):.3f} ({max_k}/{N_BITS}); null model (fair bits): mean 0.500, std "
        f"{math.sqrt(0.25 / N_BITS):.3f}."
    )
    out.append("")
    out.append("Histogram (matching bits: photos): " + ", ".join(f"{k}: {n}" for k, n in sorted(hist.items())))
    out.append("")
    out.append("## Marked copies (bit accuracy)")
    out.append("")
    out.append("| condition | mean | median | min | exact 48/48 |")
    out.append("| --- | ---: | ---: | ---: | ---: |")
    for c in CONDITIONS:
        acc = [r.marked[c] for r in positives]
        exact = sum(a == 1.0 for a in acc)
        out.append(f"| {c} | {statistics.mean(acc):.3f} | {statistics.median(acc):.3f} | {min(acc):.3f} | "
                   f"{exact}/{len(acc)} |")
    if args.with_svd:
        svd = [r.svd for r in positives]
        out.append(f"| dwtDctSvd lossless (not SDXL's) | {statistics.mean(svd):.3f} | {statistics.median(svd):.3f} | "
                   f"{min(svd):.3f} | {sum(a == 1.0 for a in svd)}/{len(svd)} |")
    inverted = sum(r.marked["diffusers_float"] <= 1 - k_chosen / N_BITS for r in positives)
    out.append("")
    out.append(f"diffusers-style copies decoding to the *inverted* message (accuracy <= {1 - k_chosen / N_BITS:.3f}): "
               f"{inverted}/{len(positives)}.")
    out.append("")
    out.append("## Thresholds")
    out.append("")
    out.append(
        f"Lowest zero-false-positive threshold here: {k_zero_fp}/{N_BITS} = {k_zero_fp / N_BITS:.3f}; "
        f"mean + {args.sigmas:g} std = {mean + args.sigmas * std:.3f} -> {k_margin}/{N_BITS}; "
        f"null-model rate <= {args.max_null_fp:g}: {k_null}/{N_BITS}. "
        f"**Chosen: {k_chosen}/{N_BITS} = {k_chosen / N_BITS:.4f}** "
        f"(module constant: {WATERMARK_MIN_BIT_ACCURACY:.4f}"
        f"{'' if math.isclose(WATERMARK_MIN_BIT_ACCURACY, k_chosen / N_BITS) else ' -- DIFFERS, update it'})."
    )
    out.append("")
    out.append("Recall = marked copies reaching the threshold; precision = TP / (TP + FP) with the unmarked photos as "
               "negatives (1.00 wherever FP is 0).")
    out.append("")
    out.append("| threshold | null FP rate | FP (unmarked) | " + " | ".join(CONDITIONS) + " | precision lossless |")
    out.append("| --- | ---: | ---: |" + " ---: |" * len(CONDITIONS) + " ---: |")
    for k in sorted({max_k - 2, max_k, k_zero_fp, 34, 36, 37, 38, 40, 41, 42, 43, 44, 46, 48, k_margin, k_null}):
        if not 0 < k <= N_BITS:
            continue
        t = k / N_BITS
        fp = sum(a >= t for a in unmarked)
        tps = {c: sum(r.marked[c] >= t for r in positives) for c in CONDITIONS}
        recalls = [f"{tps[c]}/{len(positives)} ({tps[c] / len(positives):.2f})" for c in CONDITIONS]
        tp = tps["lossless"]
        precision = f"{tp / (tp + fp):.2f}" if tp + fp else "n/a"
        mark = " **(chosen)**" if k == k_chosen else ""
        out.append(f"| {k}/{N_BITS} = {t:.3f}{mark} | {null_tail(k):.1e} | {fp}/{len(unmarked)} | "
                   + " | ".join(recalls) + f" | {precision} |")
    out.append("")
    out.append("## Decode cost (`sdxl_watermark`, one core, median per image size)")
    out.append("")
    out.append("| size | photos | ms per decode | ms per megapixel |")
    out.append("| --- | ---: | ---: | ---: |")
    by_size: dict[tuple[int, int], list[float]] = {}
    for r in rows:
        if r.decode_ms:
            by_size.setdefault(r.size, []).append(statistics.median(r.decode_ms))
    for size in sorted(by_size, key=lambda s: s[0] * s[1]):
        ms = statistics.median(by_size[size])
        out.append(f"| {size[0]}x{size[1]} | {len(by_size[size])} | {ms:.0f} | {ms / (size[0] * size[1] / 1e6):.0f} |")
    out.append("")
    out.append("## Per photo")
    out.append("")
    out.append("| photo | size | unmarked | " + " | ".join(CONDITIONS) + (" | dwtDctSvd |" if args.with_svd else " |"))
    out.append("| --- | --- | ---: |" + " ---: |" * (len(CONDITIONS) + args.with_svd))
    for r in rows:
        cells = [f"{r.marked[c]:.3f}" if c in r.marked else "-" for c in CONDITIONS]
        if args.with_svd:
            cells.append(f"{r.svd:.3f}" if r.svd is not None else "-")
        unm = f"{r.unmarked:.3f}" if r.unmarked is not None else "too small"
        out.append(f"| {r.name} | {r.size[0]}x{r.size[1]} | {unm} | " + " | ".join(cells) + " |")
    print("\n".join(out))


if __name__ == "__main__":
    main()
