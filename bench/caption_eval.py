"""Caption evaluation of a production backend: grounding failures, caption lengths and images/s on a fixed set.

Give a local VLM directory (transformers backend) or an OpenAI-compatible endpoint (e.g. vLLM serving Qwen3-VL);
the fixed set is the demo's photos plus synthetic text cards whose visible text is known exactly. Reported:

- OCR text missing (a line the OCR read is not quoted verbatim in the raw output) or altered (quoted, but with a
  different spelling or case: a case-insensitive or edit-distance <= 2 match of the line exists, the exact one not);
- invented entities: capitalised multi-word names and quoted strings in the caption that appear in none of the
  inputs (OCR text, metadata) — a VLM's world knowledge can be right, so these are for review, not failures;
- failures by reason (empty, refusal, repetitive, truncated, backend error), label/credit problems of the cleaned
  captions (`captioning.checks`), words per caption (min / median / p90 / max) and images/s end to end.

    python bench/caption_eval.py --model-path /models/Qwen3-VL-8B-Instruct --device cuda
    python bench/caption_eval.py --endpoint http://vllm:8000/v1 --model Qwen/Qwen3-VL-8B-Instruct
    python bench/caption_eval.py --backend grounded          # the embedded default, as a baseline
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioning import grounding  # noqa: E402
from captioning.captioner import CaptionerConfig, CaptionInput, load_captioner  # noqa: E402
from captioning.checks import caption_problems  # noqa: E402
from captioning.ocr import levenshtein  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "examples" / "corpus" / "photos"
CARDS = [("OPEN 24 HOURS", "Diner sign"), ("Grand Opening Sat 10am", "Shop window"), ("EXIT", "Door sign"),
         ("Café Lumière", "Cafe awning"), ("No parking", "Street sign"), ("SALE 50% OFF", "Shop poster")]
_NAME_RE = re.compile(r"\b[A-Z][\w'’-]+(?:\s+(?:of|the|de|la|von|van)?\s*[A-Z][\w'’-]+)+")
_QUOTE_RE = re.compile(r"\"([^\"]+)\"|“([^”]+)”")


def text_card(text: str, size: tuple[int, int] = (512, 320), seed: int = 0) -> Image.Image:
    """A plain card with `text` in large dark letters: its visible text is known exactly."""
    rng = np.random.default_rng(seed)
    bg = tuple(int(v) for v in rng.integers(170, 250, 3))
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    try:
        font = ImageFont.load_default(size=44)
    except TypeError:  # Pillow < 10.1: a fixed bitmap font
        font = ImageFont.load_default()
    box = draw.textbbox((0, 0), text, font=font)
    draw.text(((size[0] - box[2]) / 2, (size[1] - box[3]) / 2), text, fill=(20, 20, 30), font=font)
    return img


def fixed_set(limit: int | None = None) -> list[CaptionInput]:
    """Demo photos with their sidecar metadata, then text cards with their exact text as the OCR lines."""
    rows = [json.loads(line) for line in (PHOTOS / "metadata.jsonl").read_text().splitlines() if line.strip()]
    out = [CaptionInput(f"photo:{r['file_name']}", Image.open(PHOTOS / r["file_name"]).convert("RGB"), [],
                        {"embedded": {}, "sidecar": r}, f"file:///photos/{r['file_name']}") for r in rows]
    out += [CaptionInput(f"card:{i}", text_card(text, seed=i), [(text, 0.99)], {"embedded": {}, "sidecar":
                                                                               {"title": title}}, f"file:///cards/{i}")
            for i, (text, title) in enumerate(CARDS)]
    return out[:limit] if limit else out


def ocr_grounding(raw: str, lines: list[str]) -> tuple[list[str], list[str]]:
    """(missing, altered) OCR lines of a raw caption: altered when only a near match (case or <= 2 edits) is there."""
    missing, altered = [], []
    quotes = [m.group(1) or m.group(2) for m in _QUOTE_RE.finditer(raw)]
    for line in lines:
        if line in raw:
            continue
        near = line.casefold() in raw.casefold() or any(levenshtein(q, line) <= 2 for q in quotes)
        (altered if near else missing).append(line)
    return missing, altered


def invented_entities(caption: str, inp: CaptionInput) -> list[str]:
    """Names and quotes of a caption found in none of its inputs (for review: world knowledge may be right)."""
    sources = " ".join([*(t for t, _ in inp.ocr_lines), json.dumps(inp.metadata, ensure_ascii=False)]).casefold()
    found = [m.group(0) for m in _NAME_RE.finditer(caption)] + [m.group(1) or m.group(2)
                                                               for m in _QUOTE_RE.finditer(caption)]
    return [f for f in dict.fromkeys(found) if f.casefold() not in sources]


def evaluate(config: CaptionerConfig, inputs: list[CaptionInput]) -> dict:
    """Caption `inputs` with the configured backend and measure grounding, lengths and throughput."""
    captioner = load_captioner(config)
    start = time.perf_counter()
    captioner.setup()
    setup_s = time.perf_counter() - start
    raw_by_id: dict[str, str] = {}
    if hasattr(captioner, "_generate"):  # keep the raw generations: the grounding measure is on what the model said
        generate = captioner._generate

        def spy(items, attempt, issues):
            gens = generate(items, attempt, issues)
            for item, gen in zip(items, gens, strict=True):
                raw_by_id[item.inp.sample_id] = gen.text
            return gens

        captioner._generate = spy
    start = time.perf_counter()
    results = captioner.caption_batch(inputs)
    seconds = time.perf_counter() - start
    failures: Counter[str] = Counter()
    problems: Counter[str] = Counter()
    words, missing, altered, invented, examples = [], [], [], [], []
    for inp, res in zip(inputs, results, strict=True):
        lines = res.inputs.get("ocr_lines") or []
        if res.failure:
            failures[res.failure] += 1
        if not res.caption:
            continue
        raw = raw_by_id.get(inp.sample_id, res.caption)
        miss, alt = ocr_grounding(raw, lines)
        missing += [(inp.sample_id, m) for m in miss]
        altered += [(inp.sample_id, a) for a in alt]
        invented += [(inp.sample_id, e) for e in invented_entities(res.caption, inp)]
        words.append(len(res.caption.split()))
        problems.update(c for c, _ in caption_problems(res.caption, lines, res.inputs.get("entities") or []))
        if len(examples) < 8:
            examples.append({"sample": inp.sample_id, "caption": res.caption[:400], "raw": raw[:400]})
    lines_total = sum(len(grounding.required_ocr_lines(i.ocr_lines, config.min_ocr_score)[0]) for i in inputs)
    w = np.asarray(words) if words else np.zeros(1)
    return {"backend": config.backend, "model": getattr(captioner, "model_name", config.model or config.backend),
            "images": len(inputs), "captioned": len(words), "failures": dict(failures),
            "ocr_lines": lines_total, "ocr_missing": len(missing), "ocr_altered": len(altered),
            "ocr_examples": [f"{s}: {t!r}" for s, t in (missing + altered)[:6]],
            "invented_entities": len(invented), "invented_examples": [f"{s}: {t!r}" for s, t in invented[:6]],
            "check_problems": dict(problems),
            "words": {"min": int(w.min()), "median": float(np.median(w)), "p90": float(np.percentile(w, 90)),
                      "max": int(w.max())},
            "setup_s": round(setup_s, 2), "caption_s": round(seconds, 2),
            "images_per_s": round(len(inputs) / seconds, 3) if seconds > 0 else None, "examples": examples}


def config_from_args(args: argparse.Namespace) -> CaptionerConfig:
    backend = args.backend or ("transformers" if args.model_path else "openai" if args.endpoint else "grounded")
    return CaptionerConfig(backend=backend, model_path=args.model_path, endpoint=args.endpoint, model=args.model,
                           api_key_env=args.api_key_env, device=args.device, batch_size=args.batch_size,
                           concurrency=args.concurrency, max_new_tokens=args.max_new_tokens,
                           attn_implementation=args.attn_implementation)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("grounded", "transformers", "openai"))
    parser.add_argument("--model-path", help="local VLM directory (transformers backend)")
    parser.add_argument("--endpoint", help="OpenAI-compatible base URL (openai backend)")
    parser.add_argument("--model", help="served model name (openai) or recorded name")
    parser.add_argument("--api-key-env", help="NAME of the environment variable holding the API key")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=384)
    parser.add_argument("--attn-implementation", default=None)
    parser.add_argument("--limit", type=int, default=None, help="first N images of the fixed set")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args(argv)
    report = evaluate(config_from_args(args), fixed_set(args.limit))
    text = json.dumps(report, indent=1, ensure_ascii=False)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    return report


if __name__ == "__main__":
    main()
