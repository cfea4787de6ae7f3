"""DiT training throughput on this machine (debug size, 64 and 128 px) and an analytic FLOPs / MFU estimate.

    .venv/bin/python bench/train_bench.py [--steps 30] [--threads 1]

Throughput is measured with the real trainer (`training.trainer.train`) on synthetic shards, with the parameter-free
`hash` text encoder and no iREPA teacher (pure DiT step: forward, backward, AdamW, EMA), plus one row with the
embedded iREPA teacher (16 samples: their teacher features are computed in the first epoch, inside the excluded
warm-up, and cached after, so that row adds the projector and the cache lookup). The first 5 steps are excluded;
samples/s is the batch over the median step time (the mean is reported too: it moves with other jobs' bursts).
A 1024^2 fp32 matmul on the same threads is the compute bound. The XL-on-H100 part is on paper (see the report).
Results go to bench/results/train_bench.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tests.training.shards import write_shard_dir  # noqa: E402
from training.config import SIZES, ModelConfig, TrainConfig, param_count, recipes  # noqa: E402
from training.trainer import train  # noqa: E402

H100_BF16_DENSE = 989e12
"""H100 SXM dense bf16 tensor-core peak, FLOP/s (NVIDIA datasheet; 1,979 is the 2:4-sparsity figure)."""
MFU = 0.35
"""Assumed model-FLOPs utilisation of a tuned XL run (see the notes in the report)."""
PROD_TEXT_TOKENS = 256
"""Text tokens per sample in the production recipes (`text_max_length=256`; prompts are padded per batch)."""
QWEN3_VL_8B_LM_MATMUL = 6.95e9
"""Non-embedding parameters of Qwen3-VL-8B's language model (36 layers, width 4096, SwiGLU 12288, GQA 32/8)."""
DINOV2_L = 0.304e9
"""Parameters of a DINOv2 ViT-L/14 iREPA teacher."""


def per_token_params(config: ModelConfig) -> dict[str, int]:
    """Parameters by the tokens they act on: every token (the blocks), image tokens only (patch embedding, output
    head, iREPA projector), text tokens only (text projection), once per sample (timestep MLP, shared modulation)."""
    import torch

    from training.model import DiT, IREPAProjector

    with torch.device("meta"):
        model = DiT(config)
        projector = IREPAProjector(config.dim, config.repa_teacher_dim, config.repa_hidden)

    def count(*modules) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    return {"all_tokens": count(model.blocks), "image": count(model.patch_embed, model.final),
            "repa": count(projector), "text": count(model.text_proj),
            "per_sample": count(model.time_mlp, model.mod_shared)}


def forward_flops(config: ModelConfig, image_tokens: int, text_tokens: int, repa: bool = True) -> dict[str, float]:
    """Forward FLOPs per sample: 2 per parameter per token it acts on (one multiply-add), plus attention
    (QK^T and AV over the joint sequence L: 4 * L^2 * dim per block; GQA shares K/V but not these FLOPs)."""
    p = per_token_params(config)
    seq = image_tokens + text_tokens
    linear = 2.0 * (p["all_tokens"] * seq + p["image"] * image_tokens + p["text"] * text_tokens + p["per_sample"])
    if repa:  # the iREPA projector (3x3 conv + 1x1 conv) runs on the image-token grid of block `repa_depth`
        linear += 2.0 * p["repa"] * image_tokens
    attention = 4.0 * seq**2 * config.dim * config.depth
    return {"linear": linear, "attention": attention, "total": linear + attention}


def train_flops(config: ModelConfig, image_tokens: int, text_tokens: int, repa: bool = True) -> float:
    """Training FLOPs per sample: forward + backward = 3x forward (model FLOPs: activation recomputation excluded)."""
    return 3.0 * forward_flops(config, image_tokens, text_tokens, repa)["total"]


def matmul_bound(threads: int, n: int = 1024, reps: int = 20) -> float:
    """GFLOP/s of a plain fp32 n x n matmul on `threads` torch threads: this machine's practical compute bound."""
    import torch

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
    step_seconds = sorted(cfg.batch_size / m["samples_per_second"] for m in warm)
    sps = cfg.batch_size / step_seconds[len(step_seconds) // 2]  # median step: robust to other jobs' bursts
    mean_sps = cfg.batch_size * len(warm) / sum(step_seconds)
    tokens = (size_px // model_cfg.patch_size) ** 2
    flops = train_flops(model_cfg, tokens, 8, repa=teacher != "none")  # hash encoder: ~8 words per caption
    return {"size": size_px, "teacher": teacher, "tokens": tokens, "samples_per_second": sps, "mean_sps": mean_sps,
            "train_gflops_per_sample": flops / 1e9, "achieved_gflops": sps * flops / 1e9, "wall_s": wall,
            "loss_first": lines[0]["loss_fm"], "loss_last": lines[-1]["loss_fm"]}


def xl_h100_estimates(recipes: dict) -> list[dict]:
    """Per curriculum stage: XL's tokens and training FLOPs per sample, samples/s per H100 at `MFU`, the recipe's
    samples and GPU-hours, the frozen encoders' cost, and the activation memory per sample."""
    cfg = SIZES["XL"]
    rows = []
    for stage in ("256", "512", "1024"):
        recipe = recipes[stage]
        image_tokens = (int(stage) // cfg.patch_size) ** 2
        fwd = forward_flops(cfg, image_tokens, PROD_TEXT_TOKENS)
        flops = 3.0 * fwd["total"]
        sps = MFU * H100_BF16_DENSE / flops
        samples = recipe.steps * recipe.batch_size * recipe.num_workers
        seq = image_tokens + PROD_TEXT_TOKENS
        teacher_px = 448 if int(stage) >= 512 else 224
        frozen = 2.0 * QWEN3_VL_8B_LM_MATMUL * PROD_TEXT_TOKENS + 2.0 * DINOV2_L * ((teacher_px // 14) ** 2 + 1)
        # bf16 activations kept for backward, per block (Korthikanti et al. 2022, flash attention: ~34 * L * d bytes)
        act_block = 34.0 * seq * cfg.dim
        rows.append({"stage": stage, "image_tokens": image_tokens, "seq": seq, "train_tflop": flops / 1e12,
                     "attention_share": fwd["attention"] / fwd["total"], "samples_per_second": sps,
                     "batch": recipe.batch_size, "workers": recipe.num_workers, "samples": samples,
                     "gpu_hours": samples / sps / 3600, "frozen_tflop": frozen / 1e12, "teacher_px": teacher_px,
                     "act_full_gb": act_block * cfg.depth * recipe.batch_size / 1e9,
                     "act_ckpt_gb": (2.0 * seq * cfg.dim * cfg.depth + act_block) * recipe.batch_size / 1e9})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_bench.md"))
    args = parser.parse_args()
    load = os.getloadavg()
    bound = matmul_bound(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows = [measure(size, args.steps, args.threads, teacher, work)
                for size, teacher in ((64, "none"), (128, "none"), (64, "embedded"))]
    ests = xl_h100_estimates(recipes())
    debug, xl = SIZES["debug"], SIZES["XL"]
    xl_params = per_token_params(xl)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    lines = [
        "# DiT training throughput",
        "",
        f"Machine: {cpu}, {os.cpu_count()} CPUs, load average at start {load[0]:.1f} / {load[1]:.1f} / "
        f"{load[2]:.1f}; torch {torch.__version__} CPU, fp32, {args.threads} torch thread(s). Date: "
        f"{date.today().isoformat()}. Model: `debug` ({param_count(debug) / 1e6:.2f} M params, dim {debug.dim}, "
        f"depth {debug.depth}, patch {debug.patch_size}), batch 8, AdamW + EMA, {args.steps} steps (first 5 "
        "excluded), `hash` text encoder (~8 tokens). Command: `.venv/bin/python bench/train_bench.py`.",
        "",
        f"Bound measured in the same run: a 1024x1024 fp32 matmul on {args.threads} thread(s) reaches "
        f"{bound:.0f} GFLOP/s.",
        "",
        "| px | image tokens | iREPA teacher | samples/s (median step) | samples/s (mean) | train GFLOP/sample "
        "(analytic) | achieved GFLOP/s | share of the matmul bound | loss first -> last step |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        lines.append(f"| {r['size']} | {r['tokens']} | {r['teacher']} | {r['samples_per_second']:.1f} | "
                     f"{r['mean_sps']:.1f} | "
                     f"{r['train_gflops_per_sample']:.3f} | {r['achieved_gflops']:.1f} | "
                     f"{r['achieved_gflops'] / bound:.1%} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} |")
    lines += [
        "",
        "FLOPs model (model FLOPs, as MFU counts them): forward = 2 x (parameters x the tokens they act on) + "
        "4 x L^2 x dim x depth for attention (L = text + image tokens); the blocks act on all L tokens, the patch "
        "embedding, output head and iREPA projector on image tokens only, the text projection on text tokens only, "
        "the timestep MLP and the shared modulation once per sample; training = 3 x forward (activation "
        "recomputation not counted).",
        "",
        "## On paper: XL on one H100",
        "",
        f"XL: {param_count(xl) / 1e6:.0f} M parameters (blocks {xl_params['all_tokens'] / 1e6:.0f} M; dim "
        f"{xl.dim}, depth {xl.depth}, {xl.heads} query / {xl.kv_heads} KV heads, head_dim {xl.head_dim}), iREPA "
        f"projector {xl_params['repa'] / 1e6:.0f} M, pixel space with patch {xl.patch_size} (one token per "
        f"{xl.patch_size}x{xl.patch_size}x3 patch), {PROD_TEXT_TOKENS} text tokens (the production recipes' "
        f"`text_max_length`). Assumed MFU {MFU:.0%} of the 989 TFLOP/s dense bf16 peak "
        f"= {MFU * 989:.0f} TFLOP/s. Production recipes: 8 GPUs per stage.",
        "",
        "| stage px | image tokens | sequence | train TFLOP/sample | attention share | samples/s per H100 | "
        "recipe: batch/GPU x GPUs, samples | GPU-hours for the stage | frozen encoders TFLOP/sample (uncached) | "
        "activations GB/GPU: kept / with checkpointing |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |",
    ]
    for e in ests:
        lines.append(f"| {e['stage']} | {e['image_tokens']} | {e['seq']} | {e['train_tflop']:.2f} | "
                     f"{e['attention_share']:.0%} | {e['samples_per_second']:.0f} | {e['batch']} x {e['workers']}, "
                     f"{e['samples'] / 1e6:.1f} M | {e['gpu_hours']:,.0f} | {e['frozen_tflop']:.2f} "
                     f"({e['frozen_tflop'] / e['train_tflop']:.1f}x the step) | {e['act_full_gb']:.0f} / "
                     f"{e['act_ckpt_gb']:.1f} |")
    lines += [
        "",
        "Frozen encoders: Qwen3-VL-8B's language model over 256 text tokens (2 x 6.95 B non-embedding parameters x "
        "256; all layers run, since layer -1 is fused) plus a DINOv2 ViT-L/14 teacher at 224 px (256 stage) or "
        "448 px. Activations: ~34 x L x dim bytes per block in bf16 (the GPT estimate with FlashAttention; the "
        "gate and modulation tensors add more) for the recipe's batch; with checkpointing only each block's input "
        "is kept plus one block being recomputed.",
        "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
