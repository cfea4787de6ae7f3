"""DiT training throughput on this machine (debug size, 64 and 128 px) and an analytic FLOPs / MFU estimate.

    .venv/bin/python bench/train_bench.py [--steps 30] [--threads 1]

Throughput is measured with the real trainer (`training.trainer.train`) on synthetic shards, with the parameter-free
`hash` text encoder and no iREPA teacher (pure DiT step: forward, backward, AdamW, EMA), plus one row with the
embedded iREPA teacher (its first epoch is uncached, the worst case). The first steps (warm-up) are excluded.
Results go to bench/results/train_bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.training.shards import write_shard_dir  # noqa: E402
from training.config import SIZES, ModelConfig, TrainConfig, param_count  # noqa: E402
from training.trainer import train  # noqa: E402

H100_BF16_DENSE = 989e12
TEXT_TOKENS = 64  # prompt tokens assumed in the FLOPs estimate of the CPU runs (MiniLM, text_max_length 64)


def forward_flops(config: ModelConfig, params: int, image_tokens: int, text_tokens: int) -> float:
    """Forward FLOPs per sample: 2 * params * tokens (every weight is one multiply-add per token) plus attention
    (QK^T and AV: 4 * L^2 * d per layer, L = text + image tokens)."""
    seq = image_tokens + text_tokens
    return 2.0 * params * seq + 4.0 * seq**2 * config.dim * config.depth


def train_flops(config: ModelConfig, params: int, image_tokens: int, text_tokens: int) -> float:
    """Training FLOPs per sample: forward + backward ~ 3x forward (activation recomputation not counted: MFU)."""
    return 3.0 * forward_flops(config, params, image_tokens, text_tokens)


def measure(size_px: int, steps: int, threads: int, teacher: str, work: Path) -> dict:
    model_cfg = SIZES["debug"]
    shards = write_shard_dir(work / f"shards{size_px}", n_shards=1, per_shard=16, sizes=[(size_px, size_px)])
    cfg = TrainConfig(stage_size=0, steps=steps, batch_size=8, lr=1e-3, warmup_steps=5, log_every=1,
                      checkpoint_every=10 * steps, text_encoder="hash", teacher=teacher,
                      repa_weight=0.5 if teacher != "none" else 0.0, threads=threads, preview_prompts=())
    out = work / f"run{size_px}-{teacher}"
    start = time.perf_counter()
    train(model_cfg, cfg, str(shards), out, resume=False)
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in open(out / "metrics.jsonl")]
    warm = lines[5:]  # skip warm-up steps
    seconds = sum(cfg.batch_size / m["samples_per_second"] for m in warm)
    sps = cfg.batch_size * len(warm) / seconds
    tokens = (size_px // model_cfg.patch_size) ** 2
    params = param_count(model_cfg)
    flops = train_flops(model_cfg, params, tokens, 8)  # hash encoder: ~8 words per synthetic caption
    return {"size": size_px, "teacher": teacher, "tokens": tokens, "samples_per_second": sps,
            "train_gflops_per_sample": flops / 1e9, "achieved_gflops": sps * flops / 1e9, "wall_s": wall,
            "loss_first": lines[0]["loss_fm"], "loss_last": lines[-1]["loss_fm"]}


def xl_h100_estimate(mfu: float) -> dict:
    cfg = SIZES["XL"]
    params = param_count(cfg)
    image_tokens = (1024 // cfg.patch_size) ** 2
    text_tokens = 256
    flops = train_flops(cfg, params, image_tokens, text_tokens)
    return {"params": params, "patch": cfg.patch_size, "image_tokens": image_tokens, "text_tokens": text_tokens,
            "fwd_tflops": forward_flops(cfg, params, image_tokens, text_tokens) / 1e12, "train_tflops": flops / 1e12,
            "mfu": mfu, "samples_per_second": mfu * H100_BF16_DENSE / flops,
            "attention_share": 4.0 * (image_tokens + text_tokens) ** 2 * cfg.dim * cfg.depth
            / forward_flops(cfg, params, image_tokens, text_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_bench.md"))
    args = parser.parse_args()
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [measure(size, args.steps, args.threads, teacher, work)
                for size, teacher in ((64, "none"), (128, "none"), (64, "embedded"))]
    est = xl_h100_estimate(mfu=0.35)
    debug = SIZES["debug"]
    lines = [
        "# DiT training throughput",
        "",
        f"Machine: {os.cpu_count()} CPU cores shared with other jobs (1-min load average at start {load:.1f}), torch "
        f"CPU, fp32, {args.threads} torch thread(s). Model: `debug` size ({param_count(debug) / 1e6:.2f} M params, "
        f"dim {debug.dim}, depth {debug.depth}, patch {debug.patch_size}), batch 8, AdamW + EMA, {args.steps} steps "
        "(first 5 excluded), `hash` text encoder. Command: `.venv/bin/python bench/train_bench.py`.",
        "",
        "| px | image tokens | iREPA teacher | samples/s | train GFLOP/sample (analytic) | achieved GFLOP/s | "
        "loss first -> last step |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['tokens']} | {r['teacher']} | {r['samples_per_second']:.1f} | "
                     f"{r['train_gflops_per_sample']:.3f} | {r['achieved_gflops']:.1f} | "
                     f"{r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    lines += [
        "",
        "Achieved GFLOP/s counts model FLOPs only (the analytic formula below) on one core of an AMD EPYC "
        "(AVX-512/FMA); at this width (64) small matmuls and the elementwise work (RMSNorm, RoPE, modulation, "
        "gate) keep it far from peak, and the numbers move with the other jobs on the machine. Samples/s scales "
        "worse than 1/tokens from 64 to 128 px (4x the tokens: 7-10x slower; attention grows with L^2). With the "
        "embedded teacher, the first epoch runs the open-NSFW ResNet (224x224 input, onnxruntime) once per "
        "sample; its features are cached per sample id afterwards, so later epochs cost the same as without it.",
        "",
        "FLOPs model: forward = 2 * params * L + 4 * L^2 * d * depth (L = text + image tokens), training = 3 x "
        "forward (activation recomputation is not counted, as MFU counts model FLOPs only).",
        "",
        "## Paper estimate: XL on one H100 at 1024 px",
        "",
        f"- XL: {est['params'] / 1e6:.0f} M params (dim 1152, depth 28, 16 query / 4 KV heads), pixel space, "
        f"patch {est['patch']}: {est['image_tokens']} image tokens at 1024x1024 + {est['text_tokens']} text tokens.",
        f"- Forward {est['fwd_tflops']:.2f} TFLOP/sample (attention {est['attention_share']:.0%} of it); "
        f"training {est['train_tflops']:.1f} TFLOP/sample.",
        f"- Assumed achieved MFU {est['mfu']:.0%} of the 989 TFLOP/s dense bf16 peak = "
        f"{est['mfu'] * 989:.0f} TFLOP/s -> about {est['samples_per_second']:.0f} samples/s per H100 "
        f"({est['samples_per_second'] * 3600:.0f} images/hour).",
        "- Why 35% rather than the 40-50% of large LLM runs: width 1152 gives small GEMMs (K = 1152) that do not "
        "saturate the tensor cores, head_dim 72 is not a FlashAttention sweet spot (64/128), and the per-token "
        "elementwise work (adaLN modulation, QK-RMSNorm, 2-D RoPE, sigmoid gate, SwiGLU) is memory-bound. "
        "Activation checkpointing (the 1024 recipe enables it) re-runs each forward, so hardware utilisation is "
        "~4/3 of the MFU. 35% assumes bf16 autocast, FlashAttention via SDPA, torch.compile and FSDP/DDP "
        "overlap (our assumption for a well-tuned run, not a sourced measurement); without compile expect "
        "roughly 25-30% (~13-15 samples/s).",
        "- Not measured: no GPU here. The number is a planning estimate to size the 1024 px stage, not a result.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
