"""Prose captions and their four prompt variants on the demo corpus and corpus_dev (issue 17), without the pipeline.

Each drop is read and ingested by the pipeline's own pure functions (`plan_units`, `read_unit`, `ingest_item`), OCR
runs with the embedded engine (rapidocr), then the grounded captioner and the deterministic rewriter. Reported per
corpus: words per variant (min / p10 / median / p90 / max), facts per caption, share of samples with two variants
saying the same words (all, and where the caption states >= 3 facts: goal 0), share without a distinct long, share
of mediums under 20 words (each with its `medium_note`) and in 20-40 where the caption has room (> 25 words), quoted
text and entities kept in every variant (goal 100%), and the asset checks' problem counts.

    nice -n 10 .venv/bin/python bench/caption_variants.py [--no-ocr] [--out bench/results/caption_variants.md]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioning.captioner import CaptionerConfig, CaptionInput, load_captioner  # noqa: E402
from captioning.checks import caption_problems, variant_problems  # noqa: E402
from captioning.variants import (  # noqa: E402
    MIN_DISTINCT_FACTS,
    VARIANT_KINDS,
    VariantConfig,
    fact_count,
    rewrite_batch,
    same_text,
)
from curation.ingest import IngestConfig, ingest_item  # noqa: E402
from curation.sources import plan_units, read_unit  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CORPORA = {"demo": sorted(p for p in (ROOT / "examples" / "corpus").iterdir()
                          if not p.name.startswith((".", "ATTRIBUTION"))),
           "corpus_dev": [ROOT.parent / "shared" / "data" / "corpus_dev"]}


def ingested(drops: list[Path]) -> list[dict]:
    """The `source_images` rows the pipeline would keep from these drops (duplicates by sample_id once)."""
    config, rows, seen = IngestConfig(), [], set()
    for drop in drops:
        for unit in plan_units(str(drop), config.read):
            for item in read_unit(unit, config.read):
                row, _ = ingest_item(item, drop.name, config)
                if row is not None and row["sample_id"] not in seen:
                    seen.add(row["sample_id"])
                    rows.append(row)
    return rows


def ocr_lines(rows: list[dict], enabled: bool) -> tuple[dict[str, list], float]:
    if not enabled:
        return {}, 0.0
    from captioning.ocr import OcrConfig, load_engine

    engine = load_engine(OcrConfig())
    engine.setup()
    start = time.perf_counter()
    out = {}
    for r in rows:
        result = engine.read(Image.open(io.BytesIO(r["image"])))
        out[r["sample_id"]] = [(line.text, line.score) for line in result.lines]
    return out, time.perf_counter() - start


def _dist(values: list[int]) -> str:
    if not values:
        return "-"
    a = np.asarray(values)
    return " / ".join(str(int(round(v))) for v in (a.min(), np.percentile(a, 10), np.median(a), np.percentile(a, 90),
                                                    a.max()))


def measure(name: str, drops: list[Path], with_ocr: bool) -> tuple[dict, list[dict]]:
    rows = ingested(drops)
    lines, ocr_s = ocr_lines(rows, with_ocr)
    inputs = [CaptionInput(r["sample_id"], Image.open(io.BytesIO(r["image"])), lines.get(r["sample_id"], []),
                           json.loads(r["metadata"]), r["source_uri"]) for r in rows]
    start = time.perf_counter()
    captions = [c for c in load_captioner(CaptionerConfig()).caption_batch(inputs) if c.caption]
    caption_s = time.perf_counter() - start
    items = [{"caption": c.caption, "quoted": c.inputs["ocr_lines"], "entities": c.inputs["entities"]}
             for c in captions]
    start = time.perf_counter()
    rewrite_config = VariantConfig()
    variants = rewrite_batch(items, rewrite_config)
    variant_s = time.perf_counter() - start
    words = {k: [] for k in VARIANT_KINDS}
    facts, copies, copies3, rich, no_long, medium_notes, wide = [], 0, 0, 0, 0, 0, []
    kept = {"quotes": [0, 0], "entities": [0, 0]}
    problems: Counter[str] = Counter()
    examples = []
    for c, item, v in zip(captions, items, variants, strict=True):
        row = {"sample_id": c.sample_id, **{k: getattr(v, k) for k in VARIANT_KINDS},
               "long_is_distinct": v.long_is_distinct, "medium_note": v.medium_note, "quoted": item["quoted"],
               "entities": item["entities"]}
        n = fact_count(c.caption, item["quoted"], item["entities"])
        facts.append(n)
        present = [getattr(v, k) for k in VARIANT_KINDS if getattr(v, k)]
        copy = any(same_text(a, b) for i, a in enumerate(present) for b in present[i + 1:])
        copies += copy
        if n >= MIN_DISTINCT_FACTS:
            rich += 1
            copies3 += copy
        no_long += not v.long_is_distinct
        medium_notes += v.medium_note is not None
        if len((v.long or v.medium).split()) > 25:  # room for a 20-word medium that still differs from long
            wide.append(20 <= len(v.medium.split()) <= 40)
        for k in VARIANT_KINDS:
            if getattr(v, k):
                words[k].append(len(getattr(v, k).split()))
        for text in present:
            kept["quotes"][1] += len(item["quoted"])
            kept["quotes"][0] += sum(q in text for q in item["quoted"])
        for k in ("medium", "long"):
            text = getattr(v, k)
            if text:
                kept["entities"][1] += len(item["entities"])
                kept["entities"][0] += sum(e.casefold() in text.casefold() for e in item["entities"])
        for category, _ in caption_problems(c.caption, item["quoted"], item["entities"]):
            problems[f"caption:{category}"] += 1
        for category, _ in variant_problems(row, rewrite_config):
            problems[f"variants:{category}"] += 1
        if len(examples) < 6 and (item["quoted"] or len(examples) < 4):
            examples.append({"caption": c.caption, **{k: getattr(v, k) or f"(none: {v.long_note})"
                                                      for k in VARIANT_KINDS}})
    n = len(captions)
    share = (lambda a, b: f"{100 * a / b:.1f}%" if b else "-")  # noqa: E731
    with_text = sum(1 for v in lines.values() if v)
    summary = {"corpus": name, "images": len(rows), "captions": n, "ocr_images_with_text": with_text,
               "facts": _dist(facts), **{f"words_{k}": _dist(words[k]) for k in VARIANT_KINDS},
               "medium_in_20_40": share(sum(20 <= w <= 40 for w in words["medium"]), len(words["medium"])),
               "medium_in_20_40_where_caption_over_25_words": f"{share(sum(wide), len(wide))} of {len(wide)}",
               "medium_note (under 20 words, reason recorded)": share(medium_notes, n),
               "short_le_12": share(sum(w <= 12 for w in words["short"]), len(words["short"])),
               "identical_pair_all": share(copies, n), "identical_pair_ge3_facts": f"{share(copies3, rich)} of {rich}",
               "no_distinct_long": share(no_long, n),
               "quoted_text_kept": share(*kept["quotes"]) if kept["quotes"][1] else "- (no OCR text)",
               "entities_kept": share(*kept["entities"]) if kept["entities"][1] else "- (no entities)",
               "check_problems": dict(problems) or "none",
               "seconds": {"ocr": round(ocr_s, 1), "caption": round(caption_s, 2), "variants": round(variant_s, 2)}}
    return summary, examples


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return f"{os.cpu_count()} cores (nproc), {model}, Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-ocr", action="store_true", help="skip OCR (captions without visible text)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "caption_variants.md"))
    args = parser.parse_args()
    lines = [f"# caption_variants ({time.strftime('%Y-%m-%d')})", "", f"Machine: {machine()}", ""]
    for name, drops in CORPORA.items():
        if not all(d.exists() for d in drops):
            print(f"skip {name}: {drops} missing")
            continue
        summary, examples = measure(name, drops, not args.no_ocr)
        print(json.dumps(summary, indent=1, ensure_ascii=False))
        lines += [f"## {name}", "", "```json", json.dumps(summary, indent=1, ensure_ascii=False), "```", "",
                  "| caption | tags | short | medium | long |", "| --- | --- | --- | --- | --- |"]
        lines += ["| " + " | ".join(e[k].replace("|", "\\|") for k in ("caption", *VARIANT_KINDS)) + " |"
                  for e in examples]
        lines.append("")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
