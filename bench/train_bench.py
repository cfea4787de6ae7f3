"""DiT training on this machine: the step by phase, the debug and S models on 1 and 2 CPU workers against the matmul
bound, and XL on one H100 on paper (before / after the loader, device-side noise and the text-state cache).

    .venv/bin/python bench/train_bench.py [--steps 30] [--s-steps 12] [--no-teacher]

Every row is the real trainer (`training.trainer.train`, or `train_loop_per_worker` in 2 gloo processes through
`training.distributed.run_local`, the same launcher as tests/training/test_distributed.py) on synthetic shards, with
the parameter-free `hash` text encoder read from the text-state cache, no iREPA teacher unless the row says so,
`train(..., profile=True)`: each step is split into data (next batch from the loader, host-to-device copy), text
(the cached states' copy and the CFG-dropout mask), forward (with the loss), backward (DDP's gradient all-reduce
included), optimizer (clip + AdamW) and EMA. On CPU autograd is synchronous, so these wall times are honest; the
profiler's device syncs exist only with profile=True. The first 5 steps (3 for S) are excluded; samples/s is the
global batch over the median step (the mean too); phases are means over the same steps. The bound is a 1024^2 fp32
matmul on 1 and on 2 threads, measured in the same run. Results go to bench/results/train_bench.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.train_paper import (  # noqa: E402
    MFU,
    PROD_TEXT_TOKENS,
    per_token_params,
    text_cache_hours_per_million_rows,
    train_flops,
    xl_feed_table,
    xl_h100_estimates,
    xl_table_lines,
)
from tests.training.shards import synthetic_image, write_shard_dir  # noqa: E402
from training.config import SIZES, TrainConfig, param_count, recipes  # noqa: E402
from training.runtime import PHASES  # noqa: E402

BATCH = 8
TEXT_TOKENS = 8  # the hash encoder: ~8 words per synthetic caption


def matmul_bound(threads: int, n: int = 1024, reps: int = 20) -> float:
    """GFLOP/s of a plain fp32 n x n matmul on `threads` torch threads: this machine's practical compute bound."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best / 1e9


def measure(name: str, px: int, steps: int, warm: int, work: Path, *, workers: int = 1, threads: int = 1,
            loader_workers: int = 0, teacher: str = "none") -> dict:
    """One stage of `steps` steps of model `name` at px x px (batch 8 per worker), phases timed."""
    from training.distributed import run_local
    from training.trainer import train

    model = SIZES[name]
    shard_dir = work / f"shards{px}"
    if not shard_dir.exists():
        write_shard_dir(shard_dir, n_shards=2, per_shard=16, sizes=[(px, px)])
    cfg = TrainConfig(stage_size=0, steps=steps, batch_size=BATCH, lr=1e-3, warmup_steps=5, log_every=1,
                      checkpoint_every=10 * steps, text_encoder="hash", teacher=teacher,
                      repa_weight=0.5 if teacher != "none" else 0.0, threads=threads, loader_workers=loader_workers,
                      num_workers=workers, strategy="ddp", preview_prompts=())
    out = work / f"run-{name}-{px}-{workers}w{threads}t-l{loader_workers}-{teacher}"
    start = time.perf_counter()
    if workers == 1:
        train(model, cfg, str(shard_dir), out, resume=False, profile=True)
    else:
        run_local({"model_config": asdict(model), "train_config": asdict(cfg), "shards": [str(shard_dir)],
                   "out_dir": str(out), "resume": False, "profile": True}, workers)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")][warm:]
    global_batch = BATCH * workers
    step_s = [global_batch / m["samples_per_second"] for m in lines]
    sps = global_batch / statistics.median(step_s)
    tokens = (px // model.patch_size) ** 2
    flops = train_flops(model, tokens, TEXT_TOKENS, repa=teacher != "none")
    phases = {p: statistics.fmean(m[f"time_{p}"] for m in lines) for p in PHASES}
    return {"model": name, "px": px, "tokens": tokens, "workers": workers, "threads": threads,
            "loader_workers": loader_workers, "teacher": teacher, "sps": sps,
            "mean_sps": global_batch * len(step_s) / sum(step_s), "step_ms": 1e3 * statistics.fmean(step_s),
            "phases_ms": {p: 1e3 * v for p, v in phases.items()}, "gflops_per_sample": flops / 1e9,
            "achieved_gflops": sps * flops / 1e9, "wall_s": wall, "loss": (lines[0]["loss_fm"], lines[-1]["loss_fm"])}


def textured_jpeg(px: int, seed: int = 0) -> bytes:
    """A px x px JPEG (quality 95, the shards' default) of a smooth picture plus grain, like a photo's entropy."""
    from PIL import Image

    base = np.asarray(synthetic_image(px, px, seed), dtype=np.float32)
    grain = np.random.default_rng(seed).normal(0, 12, base.shape)
    buf = io.BytesIO()
    Image.fromarray((base + grain).clip(0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=95)
    return buf.getvalue()


def feed_costs(reps: int = 5) -> tuple[dict[int, float], dict[int, float]]:
    """ms per sample on one core of this CPU: the loader's decode of a stage-size JPEG into a float tensor, and a
    CPU `torch.randn` of the sample's noise (what the step thread did before noise moved to the device)."""
    from training.data import decode_image

    torch.set_num_threads(1)
    decode, noise = {}, {}
    for px in (256, 512, 1024):
        data = textured_jpeg(px)
        decode_image(data, (px, px))
        decode[px] = 1e3 * min(_timed(lambda d=data, p=px: decode_image(d, (p, p))) for _ in range(reps))
        noise[px] = 1e3 * min(_timed(lambda p=px: torch.randn(3, p, p)) for _ in range(reps))
    return decode, noise


def text_encoder_ms(reps: int = 5) -> float | None:
    """ms for the bundled MiniLM to encode one batch of 8 captions on one thread: the text phase per step that the
    text-state cache removes (None if MiniLM cannot be loaded here)."""
    try:
        from training.text import load_text_encoder

        encoder = load_text_encoder("minilm", max_length=64)
    except Exception as exc:  # noqa: BLE001 - optional row
        print(f"MiniLM not measured: {exc}", file=sys.stderr)
        return None
    torch.set_num_threads(1)
    prompts = [f"a watercolour painting of a lighthouse at dusk, number {i}, soft light over a calm sea and rocks"
               for i in range(BATCH)]
    encoder._encode_uncached(prompts)  # the encoder itself: its in-process LRU would answer repeats from memory
    return 1e3 * min(_timed(lambda: encoder._encode_uncached(prompts)) for _ in range(reps))


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} CPU, fp32; `uptime` at start: {uptime}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="steps of each debug row (first 5 excluded)")
    parser.add_argument("--s-steps", type=int, default=12, help="steps of each S row (first 3 excluded)")
    parser.add_argument("--no-teacher", action="store_true", help="skip the embedded-iREPA-teacher row")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_bench.md"))
    args = parser.parse_args()
    machine, started = _machine(), datetime.now(UTC)
    bounds = {t: matmul_bound(t) for t in (1, 2)}
    cases = [("debug", 64, 1, 1, 0), ("debug", 64, 1, 1, 1), ("debug", 64, 1, 2, 0), ("debug", 64, 2, 1, 0),
             ("S", 128, 1, 1, 0), ("S", 128, 1, 2, 0), ("S", 128, 2, 1, 0)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = []
        for name, px, workers, threads, loader in cases:
            steps, warm = (args.steps, 5) if name == "debug" else (args.s_steps, 3)
            rows.append(measure(name, px, steps, warm, work, workers=workers, threads=threads, loader_workers=loader))
            print(f"{name} {px}px {workers}w x {threads}t loader {loader}: {rows[-1]['sps']:.1f} samples/s",
                  flush=True)
        if not args.no_teacher:
            try:
                rows.append(measure("debug", 64, args.steps, 5, work, teacher="embedded"))
            except Exception as exc:  # noqa: BLE001 - the embedded teacher needs onnxruntime and its wheel
                print(f"teacher row skipped: {exc}", file=sys.stderr)
    decode_ms, noise_ms = feed_costs()
    minilm_ms = text_encoder_ms()
    finished = datetime.now(UTC)
    load_end = os.getloadavg()
    lines = report(rows, bounds, decode_ms, noise_ms, minilm_ms, machine, started, finished, load_end)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


def report(rows, bounds, decode_ms, noise_ms, minilm_ms, machine, started, finished, load_end) -> list[str]:
    debug, s_cfg, xl = SIZES["debug"], SIZES["S"], SIZES["XL"]
    lines = [
        "# DiT training throughput",
        "",
        f"Machine: {machine}; load average at the end {load_end[0]:.2f} / {load_end[1]:.2f} / {load_end[2]:.2f}. "
        f"Run {started:%Y-%m-%d %H:%M}-{finished:%H:%M} UTC. Command: `.venv/bin/python bench/train_bench.py`.",
        "",
        f"Models: `debug` ({param_count(debug) / 1e6:.2f} M parameters, dim {debug.dim}, depth {debug.depth}, "
        f"patch {debug.patch_size}) at 64 px = {(64 // debug.patch_size) ** 2} image tokens; `S` "
        f"({param_count(s_cfg) / 1e6:.1f} M, dim {s_cfg.dim}, depth {s_cfg.depth}, patch {s_cfg.patch_size}) at "
        f"128 px = {(128 // s_cfg.patch_size) ** 2} image tokens; batch {BATCH} per worker, AdamW + EMA, fp32, "
        "`hash` text states from the cache (~8 tokens), no iREPA teacher unless shown. Matmul bound measured in the "
        f"same run (1024^2 fp32): {bounds[1]:.0f} GFLOP/s on 1 thread, {bounds[2]:.0f} GFLOP/s on 2 threads.",
        "",
        "| model | px | workers x threads | loader workers | samples/s (median step) | samples/s (mean) | "
        "achieved GFLOP/s | share of the bound | step ms | data | text | forward | backward | optimizer | EMA | "
        "loss first -> last |",
        "| --- | ---: | --- | ---: " + "| ---: " * 11 + "| --- |",
    ]
    for r in rows:
        cores = r["workers"] * r["threads"]
        ph = r["phases_ms"]
        teacher = "" if r["teacher"] == "none" else f" + {r['teacher']} iREPA teacher"
        lines.append(
            f"| {r['model']}{teacher} | {r['px']} | {r['workers']} x {r['threads']} | {r['loader_workers']} | "
            f"{r['sps']:.1f} | {r['mean_sps']:.1f} | {r['achieved_gflops']:.1f} | "
            f"{r['achieved_gflops'] / bounds[cores]:.0%} of {cores} thread(s) | {r['step_ms']:.1f} | "
            + " | ".join(f"{ph[p]:.1f}" for p in PHASES)
            + f" | {r['loss'][0]:.3f} -> {r['loss'][1]:.3f} |")
    lines += [
        "",
        "Phases are ms per step (means; the median step can differ from their sum); `workers x threads`: gloo DDP "
        "processes x torch threads each. Train GFLOP/sample (analytic): "
        + ", ".join(sorted({f"{r['model']} {r['px']} px{' + teacher' if r['teacher'] != 'none' else ''} "
                            f"{r['gflops_per_sample']:.2f}" for r in rows})) + ".",
    ]
    if minilm_ms is not None:
        lines += ["", f"Text phase without the cache: the bundled MiniLM encodes one batch of {BATCH} captions in "
                      f"{minilm_ms:.1f} ms on one thread (measured here; the cached text phase above is the copy and "
                      "the dropout mask)."]
    estimates = xl_h100_estimates(recipes())
    feed = xl_feed_table(estimates, decode_ms, noise_ms)
    xl_params = per_token_params(xl)
    lines += ["", "## On paper: XL on one H100", ""] + xl_table_lines(estimates) + [
        "",
        "### Before and after the loader, device-side noise and the text-state cache",
        "",
        f"XL: {param_count(xl) / 1e6:.0f} M parameters (blocks {xl_params['all_tokens'] / 1e6:.0f} M), "
        f"{PROD_TEXT_TOKENS} text tokens, Qwen3-VL-8B text encoder, DINOv2-L teacher, MFU {MFU:.0%} of 989 TFLOP/s "
        "bf16 for the DiT and for the frozen encoders. Measured on this CPU, one core: JPEG decode (quality 95, "
        "stage size) + float conversion, and CPU `randn` of one sample's noise. Everything else is arithmetic.",
        "",
        "| stage px | DiT step ms/sample | text encoder ms/sample (before; now cached: 0) | teacher ms/sample "
        "(both) | decode ms/sample, one core (measured; now in loader workers) | CPU noise + pageable copy ms/sample "
        "(before; now on the device: ~0) | samples/s per H100 before / now | cores/GPU to decode at that rate | "
        "H100-hours for the stage: before / now / DiT alone |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | --- |",
    ]
    for f in feed:
        lines.append(f"| {f['stage']} | {f['step_ms']:.2f} | {f['text_ms']:.2f} | {f['teacher_ms']:.2f} | "
                     f"{f['decode_ms']:.2f} | {f['noise_ms']:.2f} | {f['before_sps']:.0f} / {f['after_sps']:.0f} | "
                     f"{f['cores_per_gpu']:.1f} | {f['before_hours']:,.0f} / {f['after_hours']:,.0f} / "
                     f"{f['dit_hours']:,.0f} |")
    lines += ["", f"Filling the text-state cache: {text_cache_hours_per_million_rows():.1f} H100-hours per million "
                  "rows (4 variants x 256 tokens, once for every stage and rerun).", ""]
    return lines


if __name__ == "__main__":
    main()
