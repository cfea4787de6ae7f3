"""OCR accuracy and speed, side by side in one run: raw rapidocr, Tesseract 5, and ours (`captioning.ocr`).

    .venv/bin/python bench/ocr_eval.py [--data ../shared/data/ocr_dev] [--lines 72] [--seed 0]
                                       [--out bench/results/ocr_eval.md]

Systems (same inputs, same scoring):

  raw rapidocr   `RapidOCR()` with its default settings (PP-OCRv6 small det + rec, angle classifier on); the
                 recognised lines joined by spaces. Box-given protocol: `use_det=False` (recognition only).
  Tesseract 5    the Debian binary, `tesseract <png> stdout -l eng`: `--psm 6` (a uniform block, its own layout
                 analysis) end to end, `--psm 7` (a single text line) when the box is given.
  ours           `captioning.ocr.RapidOcrEngine(OcrConfig())`: `read()` end to end (lines joined by spaces),
                 `read_line()` when the box is given.

Sets:

  printed_lines  --lines single-line images rendered with Pillow (seeded): DejaVu Sans / Serif / Sans Mono /
                 Sans Bold / Sans Condensed / Serif Condensed Bold at 12-64 px, sentences with digits, prices,
                 dates, phone numbers and punctuation, dark text on three light paper tones. End to end: the
                 system finds and reads the line (splits and duplicated fragments count as errors).
  scene_words    the 10 cropped scene-text words of ocr_dev (mmocr toy set), 17-30 px tall, case-sensitive ground
                 truth. Box-given (the standard protocol for cropped words) and end to end.
  receipts       the 82 non-empty annotated boxes of the 2 WildReceipt photos. Box-given: each system reads the
                 crop of the ground-truth box's bounding rectangle. Chosen over whole-image matching because the
                 annotation boxes are phrase-level (a receipt row holds several) and systems cut lines
                 differently, so a matching rule would score segmentation conventions, not reading; cropping with
                 a margin pulls pieces of the tightly packed neighbouring rows into the crop. Whitespace is removed
                 before scoring (the ground truth has none).

CER = Levenshtein distance / reference length, summed over the set (errors / reference characters), on text with
whitespace runs collapsed to one space (removed entirely for receipts); a second column folds case. images/s is
wall time over the set after model setup, one image at a time, on this shared 2-core machine (noisy, ~10-20%);
Tesseract's includes a process start per image. Tuning used only these sets (never ../shared/eval).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from captioning.ocr import levenshtein  # noqa: E402 - after the path is set

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
         "DejaVuSansCondensed.ttf", "DejaVuSerifCondensed-Bold.ttf"]
SIZES = [12, 14, 16, 20, 24, 28, 32, 40, 48, 56, 64]
NAMES = ["Maria", "the committee", "our driver", "Dr. Okafor", "the bakery", "Station 12", "the museum", "Oliver"]
ITEMS = ["tickets", "invoices", "parcels", "apples", "chairs", "keys", "lamps", "maps", "bottles"]
PLACES = ["Main Street", "Harbor Road", "Elm Avenue", "Gate B", "Platform 7", "Room 204", "the north wing"]
TEMPLATES = [
    "{name} ordered {n} {item} on {date}.",
    "Total due: ${price} (incl. {pct}% VAT)",
    "Call {phone} before {time} for delivery.",
    "The quick brown fox jumps over {n} lazy dogs!",
    "Meet at {num} {place}, {time} sharp.",
    "Invoice #{num}: {n} {item} @ ${price} each",
    "Is {name} open on Sunday? Yes, until {time}.",
    "Order {num}-{n2} shipped; ETA {date}.",
    "Temperature today: {deg}°C, wind {n2} km/h.",
    "Save {pct}% on all {item} - offer ends {date}!",
]

Sample = tuple[str, Image.Image, str]


def sentence(rng: random.Random) -> str:
    """One realistic sentence with digits and punctuation."""
    return rng.choice(TEMPLATES).format(
        name=rng.choice(NAMES), n=rng.randint(2, 99), n2=rng.randint(10, 99), item=rng.choice(ITEMS),
        date=f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2019, 2026)}",
        price=f"{rng.randint(1, 999)}.{rng.randint(0, 99):02d}", pct=rng.choice([5, 7, 10, 15, 20, 25]),
        phone=f"{rng.randint(200, 999)}-{rng.randint(100, 999)}-{rng.randint(1000, 9999)}",
        time=f"{rng.randint(6, 22)}:{rng.choice(['00', '15', '30', '45'])}", num=rng.randint(100, 9999),
        place=rng.choice(PLACES), deg=rng.randint(-5, 35))


def render_line(text: str, font_file: str, size: int, rng: random.Random) -> Image.Image:
    """`text` in one line on a light paper tone, with a margin of a third of the font size."""
    font = ImageFont.truetype(str(FONT_DIR / font_file), size)
    left, top, right, bottom = font.getbbox(text)
    pad = max(4, size // 3)
    paper = rng.choice([(255, 255, 255), (245, 240, 225), (230, 236, 242)])
    ink = rng.choice([(0, 0, 0), (40, 40, 40), (20, 30, 90)])
    img = Image.new("RGB", (right - left + 2 * pad, bottom - top + 2 * pad), paper)
    ImageDraw.Draw(img).text((pad - left, pad - top), text, font=font, fill=ink)
    return img


def printed_lines(n: int, seed: int) -> list[Sample]:
    """`n` rendered lines, fonts cycling and sizes spread over 12-64 px, deterministic for `seed`."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        text = sentence(rng)
        font, size = FONTS[i % len(FONTS)], SIZES[(i * 7 + i // len(SIZES)) % len(SIZES)]
        out.append((f"line{i:03d} {font} {size}px", render_line(text, font, size, rng), text))
    return out


def ocr_dev_sets(data: Path) -> tuple[list[Sample], list[Sample]]:
    """(scene word crops, receipt ground-truth box crops) from ocr_dev's gt.json."""
    gt = json.loads((data / "gt.json").read_text())
    scene, receipts = [], []
    for key in sorted(gt):
        entry = gt[key]
        img = Image.open(data / key).convert("RGB")
        if "regions" not in entry:
            scene.append((key, img, entry["text"]))
            continue
        for i, region in enumerate(entry["regions"]):
            if not region["text"]:
                continue
            pts = np.asarray(region["box_xyxyxyxy"], dtype=np.float64).reshape(4, 2)
            (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
            receipts.append((f"{key}#{i}", img.crop((int(x0), int(y0), int(np.ceil(x1)), int(np.ceil(y1)))),
                             region["text"]))
    return scene, receipts


def collapse_ws(s: str) -> str:
    return " ".join(s.split())


def strip_ws(s: str) -> str:
    return "".join(s.split())


def tesseract(psm: int) -> Callable[[Image.Image], str]:
    """Tesseract 5 through its binary (pytesseract is not installed), English model."""
    def read(img: Image.Image) -> str:
        buf = io.BytesIO()
        img.save(buf, "PNG")
        out = subprocess.run(["tesseract", "stdin", "stdout", "--psm", str(psm), "-l", "eng"], input=buf.getvalue(),
                             capture_output=True, check=True)
        return collapse_ws(out.stdout.decode("utf-8", "replace"))
    return read


def score(read: Callable[[Image.Image], str], samples: list[Sample], norm: Callable[[str], str]) -> dict:
    """CER, case-folded CER, images/s and the worst readings of one system on one set."""
    hyps, start = [], time.perf_counter()
    for _, img, _ in samples:
        hyps.append(read(img))
    seconds = time.perf_counter() - start
    errors = errors_ci = chars = 0
    worst = []
    for (name, _, ref), hyp in zip(samples, hyps, strict=True):
        r, h = norm(ref), norm(hyp)
        d = levenshtein(h, r)
        errors += d
        errors_ci += levenshtein(h.lower(), r.lower())
        chars += len(r)
        if d:
            worst.append((d, name, ref, hyp))
    worst.sort(key=lambda w: (-w[0], w[1]))
    return {"cer": errors / chars, "cer_ci": errors_ci / chars, "ips": len(samples) / seconds,
            "wrong": len(worst), "n": len(samples), "worst": worst[:5]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "ocr_dev")
    parser.add_argument("--lines", type=int, default=72)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "ocr_eval.md")
    args = parser.parse_args()

    from rapidocr import RapidOCR

    from captioning.ocr import OcrConfig, RapidOcrEngine

    t_all = time.perf_counter()
    # two instances: a call with use_det=False changes the instance's settings for later calls
    raw = RapidOCR(params={"Global.log_level": "critical"})
    raw_rec = RapidOCR(params={"Global.log_level": "critical"})
    ours = RapidOcrEngine(OcrConfig())
    ours.setup()

    def raw_e2e(img: Image.Image) -> str:
        res = raw(np.asarray(img))
        return " ".join(res.txts) if getattr(res, "txts", None) else ""

    def raw_box(img: Image.Image) -> str:
        res = raw_rec(np.asarray(img), use_det=False, use_cls=False, use_rec=True)
        return res.txts[0] if getattr(res, "txts", None) else ""

    def ours_e2e(img: Image.Image) -> str:
        return " ".join(line.text for line in ours.read(img).lines)

    def ours_box(img: Image.Image) -> str:
        return ours.read_line(img).text

    lines = printed_lines(args.lines, args.seed)
    scene, receipts = ocr_dev_sets(args.data)
    e2e = {"raw rapidocr": raw_e2e, "Tesseract 5 (psm 6)": tesseract(6), "ours": ours_e2e}
    boxed = {"raw rapidocr (rec only)": raw_box, "Tesseract 5 (psm 7)": tesseract(7), "ours (read_line)": ours_box}
    plan = [("printed_lines", "end to end", lines, collapse_ws, e2e),
            ("scene_words", "box given", scene, collapse_ws, boxed),
            ("scene_words", "end to end", scene, collapse_ws, e2e),
            ("receipts", "box given", receipts, strip_ws, boxed)]
    rows = []
    for set_name, protocol, samples, norm, systems in plan:
        for system, read in systems.items():
            res = score(read, samples, norm)
            rows.append((set_name, protocol, system, res))
            print(f"{set_name:14s} {protocol:11s} {system:26s} CER {res['cer']:.4f}  case-folded {res['cer_ci']:.4f}"
                  f"  {res['ips']:6.2f} img/s  ({res['wrong']}/{res['n']} wrong)", flush=True)

    try:
        tess_version = subprocess.run(["tesseract", "--version"], capture_output=True, text=True,
                                      check=True).stdout.split("\n")[0]
    except (OSError, subprocess.CalledProcessError) as exc:
        tess_version = f"unknown ({exc})"
    from importlib.metadata import version

    md = ["# OCR evaluation (`bench/ocr_eval.py`)", "",
          f"Machine: {platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), Python "
          f"{platform.python_version()}, no GPU. Date: {date.today().isoformat()}. rapidocr {version('rapidocr')} "
          f"(PP-OCRv6 small), {tess_version}. Runtime {time.perf_counter() - t_all:.0f} s.", "",
          "| set | protocol | images | system | CER | CER case-folded | images/s | lines with errors |",
          "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: |"]
    for set_name, protocol, system, res in rows:
        md.append(f"| {set_name} | {protocol} | {res['n']} | {system} | {res['cer']:.4f} | {res['cer_ci']:.4f} "
                  f"| {res['ips']:.2f} | {res['wrong']} |")
    md += ["", "Worst readings per row (edit distance, item, reference, hypothesis):", ""]
    for set_name, protocol, system, res in rows:
        if res["worst"]:
            md.append(f"- {set_name} / {protocol} / {system}: " + "; ".join(
                f"{d} `{name}` {ref!r} -> {hyp!r}" for d, name, ref, hyp in res["worst"][:3]))
    md += ["", "Protocol: see the module docstring of `bench/ocr_eval.py` (sets, systems, scoring)."]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(md) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
