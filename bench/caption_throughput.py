"""Captioning throughput on this machine, each stage against a bound or a peer measured in the same run, plus the
expected GPU figures on paper.

    .venv/bin/python bench/caption_throughput.py [--repeat 2] [--out bench/results/caption_throughput.md]

Images: the 36 corpus photos of `examples/corpus/photos` (<= 384 px, with their sidecar titles/captions as
metadata), 24 rendered text images (2-6 lines of signage/receipt-like text, DejaVu fonts, 16-44 px), and the
full-size originals listed in `../shared/data/corpus_dev/metadata.jsonl` (37, 77-1,440 px) when present.

(a) OCR: `RapidOcrEngine(OcrConfig(threads=1))` (ours, as a 1-CPU Ray actor runs it) against raw rapidocr
    (`RapidOCR()` defaults, 1 onnxruntime thread) on the same images; our detection/recognition split; and ours in
    2 worker processes (the machine) against 2x the single-process rate (linear scaling).
(b) Captioners, `caption_batch` as the `captions` asset calls it:
    grounded      decode (`curation.image_io.load_rgb`, what the asset does per image) + grounded caption, against
                  the decode alone;
    transformers  a tiny randomly initialised Qwen2-VL (`tests/captioning/conftest.py`'s builder, ~0.1 M params,
                  <= 56x56 px images) at batch 1 and 8, 64 new tokens, one attempt: the per-image and per-decode-step
                  cost of the backend and of Hugging Face's processor/generate loop with a model too small to
                  matter; plus the Qwen2-VL image processor alone at real pixel budgets (448^2 / 768^2 / 1024^2);
    openai        `ChatClient` against a local chat-completions server in a child process (127.0.0.1) that answers a
                  fixed ~90-word caption after a set delay: with no delay, the client's own cost per image against
                  the JPEG+base64 encoding alone; with a 0.25 s delay (a stand-in for generation), images/s at
                  concurrency 1-32 against the Little's-law bound ceil(n / c) x delay.
(c) Prompt variants: `rewrite_batch` (deterministic default) on the grounded captions and on the VLM-style captions
    of (b), against the grounded captioner's own rate (the stage before it).
Then the paper estimate for one H100 (see `gpu_estimates`). Best of --repeat for every timed row.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing as mp
import os
import platform
import random
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from datetime import date
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

PHOTOS = REPO / "examples" / "corpus" / "photos"
FULL_SIZE = REPO.parent / "shared" / "data" / "corpus_dev"
FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONTS = ["DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf", "DejaVuSansCondensed.ttf"]
VLM_CAPTION = (
    "A photograph of a small object on a plain surface, lit softly from the left so that a gentle shadow falls "
    "to the right. The subject fills the centre of the frame and is in sharp focus, while the background is a "
    "smooth, slightly out-of-focus wall in muted tones. The colours are natural and slightly warm, with brown, "
    "beige and grey dominating, and a few brighter highlights on the edges of the object. The composition is "
    "simple and balanced, typical of a catalogue or documentary picture taken indoors."
)
"""What the local chat server answers (about 90 words, like a VLM caption without entities)."""

Sample = tuple[str, bytes, dict]  # (name, encoded image, ingest-style metadata)


# ---------------------------------------------------------------------------------------------------------------
# Inputs


def _encode(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def corpus_photos() -> list[Sample]:
    """The corpus photos with their sidecar metadata as ingest stores it (`{"embedded": {}, "sidecar": {...}}`)."""
    meta = {}
    for line in (PHOTOS / "metadata.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            meta[rec["file_name"]] = {k: v for k, v in rec.items() if k in ("title", "caption", "credit") and v}
    return [(p.name, p.read_bytes(), {"embedded": {}, "sidecar": meta.get(p.name, {})})
            for p in sorted(PHOTOS.iterdir()) if p.suffix.lower() in (".jpg", ".png")]


def full_size_photos() -> list[Sample]:
    """The original corpus_dev files (77-1,440 px), with their titles; empty when the directory is missing."""
    if not (FULL_SIZE / "metadata.jsonl").is_file():
        return []
    out = []
    for line in (FULL_SIZE / "metadata.jsonl").read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            path = FULL_SIZE / rec["file"]
            if path.is_file():
                sidecar = {"title": rec.get("title"), "caption": rec.get("caption_from_source")}
                out.append((path.name, path.read_bytes(), {"embedded": {}, "sidecar": {k: v for k, v in
                                                                                         sidecar.items() if v}}))
    return out


def text_images(n: int = 24, seed: int = 0) -> list[Sample]:
    """`n` signs/notices: 2-6 lines of sentences with digits and punctuation, centred on a light paper tone."""
    from ocr_eval import sentence

    rng = random.Random(seed)
    out = []
    for i in range(n):
        size = rng.choice([16, 20, 24, 28, 32, 36, 44])
        font = ImageFont.truetype(str(FONT_DIR / FONTS[i % len(FONTS)]), size)
        lines = [sentence(rng) for _ in range(rng.randint(2, 6))]
        widths = [font.getbbox(t)[2] - font.getbbox(t)[0] for t in lines]
        pad, step = size, int(size * 1.5)
        img = Image.new("RGB", (max(widths) + 2 * pad, step * len(lines) + 2 * pad),
                        rng.choice([(255, 255, 255), (245, 240, 225), (230, 236, 242)]))
        draw = ImageDraw.Draw(img)
        for j, (text, w) in enumerate(zip(lines, widths, strict=True)):
            draw.text(((img.width - w) // 2, pad + j * step), text, font=font, fill=(25, 25, 25))
        out.append((f"text{i:02d}", _encode(img), {"embedded": {}, "sidecar": {}}))
    return out


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    """(fastest wall seconds, result of that run) over `repeat` runs."""
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - start
        if seconds < best:
            best, result = seconds, out
    return best, result


# ---------------------------------------------------------------------------------------------------------------
# (a) OCR


class _Timed:
    """Wraps a callable and adds up the seconds spent in it."""

    def __init__(self, fn: Callable) -> None:
        self.fn, self.seconds = fn, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


_WORKER_ENGINE = None


def _ocr_worker_init() -> None:
    global _WORKER_ENGINE
    from captioning.ocr import OcrConfig, RapidOcrEngine

    _WORKER_ENGINE = RapidOcrEngine(OcrConfig(threads=1))
    _WORKER_ENGINE.setup()
    _WORKER_ENGINE.read(Image.new("RGB", (64, 32), "white"))


def _ocr_worker(data: bytes) -> int:
    from curation.image_io import load_rgb

    assert _WORKER_ENGINE is not None
    return len(_WORKER_ENGINE.read(load_rgb(data)).lines)


def bench_ocr(sets: dict[str, list[Sample]], repeat: int) -> tuple[list[dict], dict, dict[str, list]]:
    """Rows per set (ours vs raw rapidocr), the two-process row, and our OCR lines per image (for captioning)."""
    import numpy as np
    from rapidocr import RapidOCR

    from captioning.ocr import OcrConfig, RapidOcrEngine
    from curation.image_io import load_rgb

    ours = RapidOcrEngine(OcrConfig(threads=1))
    ours.setup()
    ours._det, ours._rec = _Timed(ours._det), _Timed(ours._rec)
    raw = RapidOCR(params={"Global.log_level": "critical", "EngineConfig.onnxruntime.intra_op_num_threads": 1})
    warm = load_rgb(sets["text images"][0][1])
    ours.read(warm)
    raw(np.asarray(warm))
    rows, lines_by_name = [], {}
    for set_name, samples in sets.items():
        images = [load_rgb(data) for _, data, _ in samples]
        pixels = sum(im.width * im.height for im in images) / len(images)

        def run_ours(images=images):
            ours._det.seconds = ours._rec.seconds = 0.0
            return [ours.read(im) for im in images], ours._det.seconds, ours._rec.seconds

        def run_raw(images=images):
            out = []
            for im in images:
                res = raw(np.asarray(im))
                out.append(list(res.txts) if getattr(res, "txts", None) else [])
            return out

        t_ours, (results, det_s, rec_s) = best_of(repeat, run_ours)
        t_raw, raw_lines = best_of(repeat, run_raw)
        for (name, _, _), res in zip(samples, results, strict=True):
            lines_by_name[name] = [(line.text, float(line.score)) for line in res.lines]
        n = len(samples)
        rows.append({"set": set_name, "n": n, "mpix": pixels / 1e6, "ours_ips": n / t_ours, "raw_ips": n / t_raw,
                     "ours_lines": sum(len(r.lines) for r in results) / n,
                     "raw_lines": sum(len(x) for x in raw_lines) / n,
                     "det_ms": 1000 * det_s / n, "rec_ms": 1000 * rec_s / n,
                     "other_ms": 1000 * (t_ours - det_s - rec_s) / n})
        print(f"OCR {set_name:16s} ours {n / t_ours:6.2f} img/s  raw {n / t_raw:6.2f} img/s  det "
              f"{1000 * det_s / n:.0f} ms rec {1000 * rec_s / n:.0f} ms", flush=True)

    all_data = [data for samples in sets.values() for _, data, _ in samples]
    one = sum(r["n"] for r in rows) / sum(r["n"] / r["ours_ips"] for r in rows)
    workers = min(2, os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                             initializer=_ocr_worker_init) as pool:
        list(pool.map(_ocr_worker, all_data[:workers * 2]))  # every worker has built its sessions
        t_pool, _ = best_of(repeat, lambda: list(pool.map(_ocr_worker, all_data, chunksize=2)))
    pool_row = {"workers": workers, "n": len(all_data), "ips": len(all_data) / t_pool, "one_ips": one}
    print(f"OCR {workers} processes {pool_row['ips']:.2f} img/s (1 process {one:.2f})", flush=True)
    return rows, pool_row, lines_by_name


# ---------------------------------------------------------------------------------------------------------------
# (b) captioners


def caption_inputs(samples: list[Sample], lines_by_name: dict[str, list]) -> list:
    from captioning.captioner import CaptionInput
    from curation.image_io import load_rgb

    return [CaptionInput(f"id-{name}", load_rgb(data), lines_by_name.get(name, []), meta, f"file:///drop/{name}")
            for name, data, meta in samples]


def bench_grounded(sets: dict[str, list[Sample]], lines_by_name: dict, repeat: int) -> tuple[list[dict], list]:
    """Per set: decode alone vs decode + grounded caption (what `caption_part` does per image)."""
    from captioning.captioner import CaptionerConfig, CaptionInput, load_captioner
    from curation.image_io import load_rgb

    captioner = load_captioner(CaptionerConfig())
    captioner.setup()
    rows, results = [], []
    for set_name, samples in sets.items():
        n = len(samples)
        t_decode, _ = best_of(repeat, lambda samples=samples: [load_rgb(d) for _, d, _ in samples])

        def run(samples=samples):
            inputs = [CaptionInput(f"id-{name}", load_rgb(data), lines_by_name.get(name, []), meta,
                                   f"file:///drop/{name}") for name, data, meta in samples]
            return captioner.caption_batch(inputs)

        t_caption, res = best_of(repeat, run)
        results.extend(res)
        rows.append({"set": set_name, "n": n, "decode_ips": n / t_decode, "caption_ips": n / t_caption,
                     "words": sum(len(r.caption.split()) for r in res) / n,
                     "failures": sum(r.failure is not None for r in res)})
        print(f"grounded {set_name:16s} decode {n / t_decode:7.1f} img/s  decode+caption {n / t_caption:7.1f} img/s",
              flush=True)
    return rows, results


class _TimedProcessor:
    """Delegates to a transformers processor, timing its `__call__` (image preprocessing + tokenisation)."""

    def __init__(self, processor) -> None:
        self._p, self.seconds = processor, 0.0

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._p(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start

    def __getattr__(self, name):
        return getattr(self._p, name)


def bench_transformers(inputs: list, repeat: int, work: Path) -> list[dict]:
    """The transformers backend with a tiny random Qwen2-VL: images/s, processor share, ms per decode step."""
    import torch

    from captioning.captioner import CaptionerConfig, load_captioner
    from tests.captioning.conftest import build_tiny_qwen2_vl

    torch.set_num_threads(1)
    model_dir = build_tiny_qwen2_vl(str(work / "tiny-qwen2-vl"))
    rows = []
    for batch, subset in ((1, inputs[:16]), (8, inputs)):
        config = CaptionerConfig(backend="transformers", model_path=model_dir, batch_size=batch, max_new_tokens=64,
                                 max_caption_attempts=1, num_threads=1, device="cpu")
        captioner = load_captioner(config)
        captioner.setup()
        captioner.processor = _TimedProcessor(captioner.processor)
        generate = _Timed(captioner.model.generate)
        steps = []

        def counting_generate(*args, generate=generate, steps=steps, **kwargs):
            out = generate(*args, **kwargs)
            steps.append(out.shape[1] - kwargs["input_ids"].shape[1])
            return out

        captioner.model.generate = counting_generate
        captioner.caption_batch(subset[:batch])  # warm-up

        def run(captioner=captioner, subset=subset, generate=generate, steps=steps):
            captioner.processor.seconds = generate.seconds = 0.0
            steps.clear()
            captioner.caption_batch(subset)
            return captioner.processor.seconds, generate.seconds, sum(steps)

        seconds, (proc_s, gen_s, n_steps) = best_of(repeat, run)
        n = len(subset)
        rows.append({"batch": batch, "n": n, "ips": n / seconds, "proc_ms": 1000 * proc_s / n,
                     "gen_ms": 1000 * gen_s / n, "other_ms": 1000 * (seconds - proc_s - gen_s) / n,
                     "step_ms": 1000 * gen_s / max(1, n_steps), "tokens_per_s": n_steps * batch / gen_s})
        print(f"transformers batch {batch}: {n / seconds:.2f} img/s, {1000 * gen_s / max(1, n_steps):.1f} ms/step",
              flush=True)
    return rows


def bench_vlm_preprocessing(samples: list[Sample], repeat: int) -> list[dict]:
    """Qwen2-VL image preprocessing alone at real pixel budgets, after the captioner's own preparation."""
    from transformers import Qwen2VLImageProcessor

    from captioning.captioner import CaptionerConfig, TransformersCaptioner
    from curation.image_io import load_rgb

    prep = TransformersCaptioner(CaptionerConfig(backend="transformers", model_path="unused"))
    images = [load_rgb(data) for _, data, _ in samples]
    t_prepare, prepared = best_of(repeat, lambda: [prep._prepare(_Input(im)).image for im in images])
    rows = [{"budget": "captioner _prepare (orient, flatten, <= 1280 px)", "ms": 1000 * t_prepare / len(images),
             "tokens": None}]
    for side in (448, 768, 1024):
        proc = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=side * side)
        t, out = best_of(repeat, lambda proc=proc: [proc(images=im, return_tensors="pt")["image_grid_thw"]
                                                    for im in prepared])
        tokens = sum(int(g.prod()) for g in out) / 4 / len(out)  # 2x2 patches merge into one LM token
        rows.append({"budget": f"Qwen2-VL image processor, max_pixels {side}^2", "ms": 1000 * t / len(images),
                     "tokens": tokens})
    return rows


class _Input:
    """The fields of a CaptionInput that `_prepare` reads."""

    def __init__(self, image: Image.Image) -> None:
        self.image, self.ocr_lines, self.metadata, self.source_uri, self.sample_id = image, [], {}, None, "x"


def _serve(port_queue, text: str) -> None:
    """A chat-completions server on 127.0.0.1: `/d<ms>/v1/chat/completions` answers `text` after <ms> ms."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    payload = json.dumps({"id": "c", "object": "chat.completion", "model": "bench-vlm",
                          "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                       "finish_reason": "stop"}],
                          "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(int(self.path.split("/")[1][1:]) / 1000)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 256  # listen() backlog; the default 5 drops simultaneous connects (1 s SYN retry)

    httpd = Server(("127.0.0.1", 0), Handler)
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever(poll_interval=0.05)


def bench_openai(inputs: list, repeat: int) -> tuple[list[dict], dict, list]:
    """The openai backend against the local server: client cost with no delay, then concurrency scaling."""
    from captioning.captioner import CaptionerConfig, load_captioner
    from captioning.openai_client import image_data_url

    ctx = mp.get_context("spawn")
    port_queue = ctx.Queue()
    server = ctx.Process(target=_serve, args=(port_queue, VLM_CAPTION), daemon=True)
    server.start()
    port = port_queue.get(timeout=60)
    rows, results = [], []
    try:
        prepared = [load_captioner(CaptionerConfig(backend="openai", endpoint="http://x/v1", model="m"))._prepare(i)
                    for i in inputs]
        t_encode, _ = best_of(repeat, lambda: [image_data_url(p.image) for p in prepared])
        encode = {"n": len(inputs), "ms": 1000 * t_encode / len(inputs),
                  "kib": sum(len(image_data_url(p.image)) for p in prepared) / len(prepared) / 1024}
        for delay_ms, concurrencies in ((0, (1, 8)), (250, (1, 4, 8, 16, 32))):
            for c in concurrencies:
                config = CaptionerConfig(backend="openai", endpoint=f"http://127.0.0.1:{port}/d{delay_ms}/v1",
                                         model="bench-vlm", concurrency=c, timeout_s=30.0, max_retries=0)
                captioner = load_captioner(config)
                captioner.setup()
                captioner.caption_batch(inputs[:c])  # warm-up (threads, first connections)
                seconds, res = best_of(repeat if delay_ms == 0 or c > 1 else 1,
                                       lambda captioner=captioner: captioner.caption_batch(inputs))
                n = len(inputs)
                bound = math.ceil(n / c) * delay_ms / 1000
                rows.append({"delay_ms": delay_ms, "c": c, "n": n, "ips": n / seconds, "ms": 1000 * seconds / n,
                             "bound_ips": n / bound if bound else None,
                             "failures": sum(r.failure is not None for r in res)})
                results = res
                print(f"openai delay {delay_ms} ms c={c}: {n / seconds:.1f} img/s", flush=True)
    finally:
        server.terminate()
        server.join(10)
    return rows, encode, results


# ---------------------------------------------------------------------------------------------------------------
# (c) prompt variants


def bench_variants(caption_sets: dict[str, list], repeat: int) -> list[dict]:
    from captioning.variants import VariantConfig, rewrite_batch

    rows = []
    for name, results in caption_sets.items():
        items = [{"caption": r.caption, "quoted": list(r.inputs.get("ocr_lines") or []),
                  "entities": [str(v) for k, v in (r.inputs.get("metadata") or {}).items()
                               if k in ("title", "place", "creator") and isinstance(v, str)]}
                 for r in results if r.caption]
        seconds, out = best_of(repeat, lambda items=items: rewrite_batch(items, VariantConfig()))
        rows.append({"set": name, "n": len(items), "ips": len(items) / seconds,
                     "words": sum(len(i["caption"].split()) for i in items) / len(items),
                     "short_words": sum(len(v.short.split()) for v in out) / len(out),
                     "medium_words": sum(len(v.medium.split()) for v in out) / len(out)})
        print(f"variants {name}: {len(items) / seconds:.1f} captions/s", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# GPU on paper

H100 = {"name": "H100 SXM 80 GB", "bf16": 989e12, "hbm": 3.35e12, "memory": 80e9}
"""Dense bf16 tensor-core peak (no sparsity) and HBM3 bandwidth of the SXM part (NVIDIA's datasheet)."""
VLMS = {
    # LM: non-embedding params (matmuls per token), all LM params (bytes read per decode step), layers, KV heads,
    # head dim; vision: params, pixels per LM token side (patch x 2x2 merge), patch side, attention over all patches?
    "Qwen2.5-VL-7B": {"lm_matmul": 6.53e9, "lm_all": 7.62e9, "vit": 0.675e9, "layers": 28, "kv_heads": 4,
                      "head_dim": 128, "q_dim": 3584, "px_per_token": 28, "patch": 14, "vit_dim": 1280,
                      "vit_layers": 32, "vit_full_attn_layers": 4, "window_patches": 64},
    "Qwen3-VL-8B": {"lm_matmul": 6.95e9, "lm_all": 8.19e9, "vit": 0.58e9, "layers": 36, "kv_heads": 8,
                    "head_dim": 128, "q_dim": 4096, "px_per_token": 32, "patch": 16, "vit_dim": 1152,
                    "vit_layers": 27, "vit_full_attn_layers": 27, "window_patches": None},
}
OUT_TOKENS = 200
"""Assumed mean caption length in tokens (a 120-150 word paragraph; the captioner's budget is 384)."""
PREFILL_MFU = 0.5
"""Assumed fraction of the bf16 peak reached by prefill and the vision encoder (large GEMMs; vLLM or HF+SDPA)."""
DECODE_BW_EFF = 0.7
"""Assumed fraction of HBM bandwidth reached by a decode step (vLLM with CUDA graphs; HF eager is worse)."""
HF_STEP_FLOOR_S = 0.025
"""Assumed floor of one HF `generate` decode step for a 7-8B model in eager mode (kernel launches + Python); our
assumption, not a sourced measurement: it dominates at small batch, so measure it on the first GPU run."""


def decode_seconds(step_bytes: tuple[float, float], batch: int, eff: float, floor: float = 0.0,
                   steps: float = OUT_TOKENS) -> float:
    """Decode seconds per image: `steps` memory-bound steps of a `batch`, each reading the weights and every
    sequence's KV cache at `eff` of the HBM bandwidth (never faster than `floor`), shared by the batch."""
    weights, kv_per_sequence = step_bytes
    step = max(floor, (weights + batch * kv_per_sequence) / (eff * H100["hbm"]))
    return steps * step / batch


def gpu_estimates(prompt_text_tokens: int) -> list[dict]:
    """Per model and pixel budget: tokens, KV per sequence, and images/s on one H100 via HF static batches and vLLM."""
    rows = []
    for name, m in VLMS.items():
        kv_per_token = 2 * m["layers"] * m["kv_heads"] * m["head_dim"] * 2  # K and V, bf16
        weights = 2 * (m["lm_all"] + m["vit"])
        kv_budget = 0.9 * H100["memory"] - weights - 4e9  # vLLM's 0.9 share, minus weights and ~4 GB activations
        for side in (448, 768, 1024):
            grid = round(side / m["px_per_token"])
            img_tokens = grid * grid
            patches = 4 * img_tokens
            prompt = img_tokens + prompt_text_tokens
            ctx = prompt + OUT_TOKENS
            vit_attn_patches = patches if m["window_patches"] is None else m["window_patches"]
            windowed_layers = m["vit_layers"] - m["vit_full_attn_layers"]
            vit_flops = (2 * m["vit"] * patches + 4 * patches * vit_attn_patches * m["vit_dim"] * windowed_layers
                         + 4 * patches * patches * m["vit_dim"] * m["vit_full_attn_layers"])
            prefill_flops = 2 * m["lm_matmul"] * prompt + 2 * prompt**2 * m["q_dim"] * m["layers"]  # causal half
            compute_s = (vit_flops + prefill_flops) / (PREFILL_MFU * H100["bf16"])
            seq_bytes = ctx * kv_per_token
            max_seqs = int(kv_budget // seq_bytes)
            avg_ctx = prompt + OUT_TOKENS / 2

            step_bytes = 2 * m["lm_all"], avg_ctx * kv_per_token  # weights once per step, KV per sequence
            vllm_batch = min(256, max_seqs)
            vllm_ips = 1 / (compute_s + decode_seconds(step_bytes, vllm_batch, DECODE_BW_EFF))
            vllm64_ips = 1 / (compute_s + decode_seconds(step_bytes, 64, DECODE_BW_EFF))
            hf_batch = 32 if side > 448 else 64
            # static batch: every sequence waits for the longest (~1.5x the mean), steps never cheaper than the floor
            hf_ips = 1 / (compute_s + decode_seconds(step_bytes, hf_batch, 0.5, HF_STEP_FLOOR_S, 1.5 * OUT_TOKENS))
            rows.append({"model": name, "side": side, "img_tokens": img_tokens, "prompt": prompt,
                         "kv_kib_token": kv_per_token / 1024, "seq_mb": seq_bytes / 1e6, "max_seqs": max_seqs,
                         "weights_gb": weights / 1e9, "vit_tflop": vit_flops / 1e12,
                         "prefill_tflop": prefill_flops / 1e12, "compute_ms": 1000 * compute_s,
                         "vllm_batch": vllm_batch, "vllm_ips": vllm_ips, "vllm64_ips": vllm64_ips,
                         "hf_batch": hf_batch, "hf_ips": hf_ips,
                         "latency_s": vllm_batch / vllm_ips})  # Little's law: in flight = rate x latency
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--limit", type=int, default=0, help="at most this many images per set (smoke runs)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "caption_throughput.md")
    args = parser.parse_args()

    t_all = time.perf_counter()
    load = os.getloadavg()
    photos, texts, full = corpus_photos(), text_images(), full_size_photos()
    if args.limit:
        photos, texts, full = photos[:args.limit], texts[:args.limit], full[:args.limit]
    sets = {"corpus photos": photos, "text images": texts}
    if full:
        sets["full-size photos"] = full
    ocr_rows, pool_row, lines_by_name = bench_ocr(sets, args.repeat)
    grounded_rows, grounded_results = bench_grounded(sets, lines_by_name, args.repeat)
    vlm_inputs = caption_inputs(photos + texts, lines_by_name)
    with tempfile.TemporaryDirectory() as tmp:
        tf_rows = bench_transformers(vlm_inputs, args.repeat, Path(tmp))
    pre_rows = bench_vlm_preprocessing(full or photos, args.repeat)
    openai_inputs = (vlm_inputs * 2)[:64]
    openai_rows, encode, openai_results = bench_openai(openai_inputs, args.repeat)
    variant_rows = bench_variants({"grounded captions": grounded_results,
                                   "VLM-style captions (openai run)": openai_results[:len(vlm_inputs)]}, args.repeat)

    from captioning.captioner import SYSTEM_PROMPT, build_prompt, extract_caption_metadata

    prompt_chars = [len(SYSTEM_PROMPT) + len(build_prompt(extract_caption_metadata(i.metadata, i.source_uri),
                                                          [t for t, s in i.ocr_lines if s >= 0.5])[0])
                    for i in vlm_inputs]
    prompt_tokens = round(sum(prompt_chars) / len(prompt_chars) / 4) + 30  # ~4 chars/token + chat template tokens
    gpu_rows = gpu_estimates(prompt_tokens)
    write_report(args, load, time.perf_counter() - t_all, sets, ocr_rows, pool_row, grounded_rows, tf_rows, pre_rows,
                 encode, openai_rows, variant_rows, prompt_tokens, gpu_rows)


def write_report(args, load, runtime, sets, ocr_rows, pool_row, grounded_rows, tf_rows, pre_rows, encode,
                 openai_rows, variant_rows, prompt_tokens, gpu_rows) -> None:
    from importlib.metadata import version

    grounded_ips = {r["set"]: r["caption_ips"] for r in grounded_rows}
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.machine())
    md = ["# Captioning throughput (`bench/caption_throughput.py`)", "",
          f"Machine: {cpu}, {os.cpu_count()} CPUs, Python {platform.python_version()}, no GPU; "
          f"load average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}. Date: {date.today().isoformat()}. "
          f"rapidocr {version('rapidocr')}, onnxruntime {version('onnxruntime')}, transformers "
          f"{version('transformers')}, torch {version('torch')}. Best of {args.repeat}; runtime {runtime:.0f} s. "
          "Images: " + ", ".join(f"{k} ({len(v)})" for k, v in sets.items()) + ".", "",
          "## (a) OCR, one engine on one thread (a 1-CPU actor)", "",
          "| set | images | mean Mpx | ours images/s | raw rapidocr images/s | ours / raw | ours lines/image | "
          "raw lines/image | ours ms: detect / recognise / rest |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in ocr_rows:
        md.append(f"| {r['set']} | {r['n']} | {r['mpix']:.2f} | {r['ours_ips']:.2f} | {r['raw_ips']:.2f} | "
                  f"{r['ours_ips'] / r['raw_ips']:.2f} | {r['ours_lines']:.1f} | {r['raw_lines']:.1f} | "
                  f"{r['det_ms']:.0f} / {r['rec_ms']:.0f} / {r['other_ms']:.0f} |")
    md += ["", f"Ours in {pool_row['workers']} processes over all {pool_row['n']} images: {pool_row['ips']:.2f} "
               f"images/s = {pool_row['ips'] / (pool_row['workers'] * pool_row['one_ips']):.2f} of linear scaling "
               f"({pool_row['workers']} x {pool_row['one_ips']:.2f}).", "",
           "## (b) Captioners", "", "Grounded (embedded default), per image as the `captions` asset runs it:", "",
           "| set | images | decode only images/s (bound) | decode + grounded caption images/s | ratio to bound | "
           "words/caption | failures |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in grounded_rows:
        md.append(f"| {r['set']} | {r['n']} | {r['decode_ips']:.1f} | {r['caption_ips']:.1f} | "
                  f"{r['caption_ips'] / r['decode_ips']:.2f} | {r['words']:.0f} | {r['failures']} |")
    md += ["", "Transformers backend, tiny random Qwen2-VL on CPU (1 thread), 64 new tokens, one attempt "
               "(corpus photos + text images):", "",
           "| batch | images | images/s | processor ms/image | generate ms/image | rest ms/image | "
           "ms per decode step (whole batch) | tokens/s |",
           "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in tf_rows:
        md.append(f"| {r['batch']} | {r['n']} | {r['ips']:.2f} | {r['proc_ms']:.1f} | {r['gen_ms']:.1f} | "
                  f"{r['other_ms']:.1f} | {r['step_ms']:.2f} | {r['tokens_per_s']:.0f} |")
    md += ["", f"VLM image preparation on the CPU, per image, over {'full-size' if 'full-size photos' in sets else ''}"
               " photos (what a GPU actor's CPU must do before the model sees the image):", "",
           "| step | ms/image | LM image tokens/image |", "| --- | ---: | ---: |"]
    for r in pre_rows:
        tokens = "" if r["tokens"] is None else f"{r['tokens']:.0f}"
        md.append(f"| {r['budget']} | {r['ms']:.1f} | {tokens} |")
    md += ["", f"OpenAI-compatible backend against a local server (127.0.0.1, child process), {openai_rows[0]['n']} "
               f"images; JPEG + base64 of the prepared image alone: {encode['ms']:.1f} ms/image "
               f"({encode['kib']:.0f} KiB per data URL):", "",
           "| server delay | concurrency | images/s | bound images/s (ceil(n/c) x delay) | ratio to bound | "
           "ms/image | failures |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in openai_rows:
        bound = f"{r['bound_ips']:.1f}" if r["bound_ips"] else "-"
        ratio = f"{r['ips'] / r['bound_ips']:.2f}" if r["bound_ips"] else "-"
        md.append(f"| {r['delay_ms']} ms | {r['c']} | {r['ips']:.1f} | {bound} | {ratio} | {r['ms']:.1f} | "
                  f"{r['failures']} |")
    md += ["", "## (c) Prompt variants (deterministic default)", "",
           "| captions | n | captions/s | vs grounded captioner (corpus photos) | words in -> short / medium |",
           "| --- | ---: | ---: | ---: | --- |"]
    for r in variant_rows:
        md.append(f"| {r['set']} | {r['n']} | {r['ips']:.1f} | {r['ips'] / grounded_ips['corpus photos']:.1f}x | "
                  f"{r['words']:.0f} -> {r['short_words']:.1f} / {r['medium_words']:.1f} |")
    md += ["", "## GPU on paper: one H100 SXM 80 GB", "",
           f"Prompt text tokens per image (system + instructions + OCR/metadata context + chat template, from this "
           f"run's prompts at ~4 characters per token): {prompt_tokens}. Caption: {OUT_TOKENS} tokens. "
           f"Prefill + vision at {PREFILL_MFU:.0%} of 989 TFLOP/s; decode steps read all LM weights plus the "
           f"batch's KV cache at {DECODE_BW_EFF:.0%} of 3.35 TB/s (vLLM) or 50% with a {HF_STEP_FLOOR_S * 1000:.0f} "
           "ms floor per step and 1.5x the mean length per static batch (HF `generate`).", "",
           "| model | max side px | image tokens | prompt tokens | KV KiB/token | KV MB/sequence | sequences in KV "
           "budget | vision + prefill TFLOP | ms/image compute | HF batch -> images/s | vLLM in flight -> images/s "
           "| vLLM, 64 in flight | vLLM latency s |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | ---: | ---: |"]
    for r in gpu_rows:
        md.append(f"| {r['model']} | {r['side']} | {r['img_tokens']} | {r['prompt']} | {r['kv_kib_token']:.0f} | "
                  f"{r['seq_mb']:.0f} | {r['max_seqs']} | {r['vit_tflop'] + r['prefill_tflop']:.1f} | "
                  f"{r['compute_ms']:.1f} | {r['hf_batch']} -> {r['hf_ips']:.1f} | {r['vllm_batch']} -> "
                  f"{r['vllm_ips']:.1f} | {r['vllm64_ips']:.1f} | {r['latency_s']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(md) + "\n")
    print("\n".join(md))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
