"""The FLOPs model of the DiT and the on-paper XL-on-one-H100 tables of `bench/train_bench.py`.

Everything here is arithmetic on the model's shapes and stated assumptions (peak, MFU, link bandwidth), except the
inputs the caller measures on its own CPU (JPEG decode and CPU noise per sample), which are passed in.
"""

from __future__ import annotations

from training.config import SIZES, ModelConfig

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
PAGEABLE_H2D = 25e9
"""Bytes/s of a host-to-device copy from pageable memory over PCIe Gen5 x16 (about half the pinned rate)."""
VARIANTS = 4
"""Prompt variants per row that the text-state cache encodes (tags, short, medium, long)."""


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


def text_encoder_flops(tokens: int = PROD_TEXT_TOKENS) -> float:
    """Forward FLOPs of Qwen3-VL-8B's language model over one prompt (all layers: layer -1 is among the fused)."""
    return 2.0 * QWEN3_VL_8B_LM_MATMUL * tokens


def teacher_flops(px: int) -> float:
    """Forward FLOPs of the DINOv2 ViT-L/14 teacher on one image (patch tokens + CLS)."""
    return 2.0 * DINOV2_L * ((px // 14) ** 2 + 1)


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
        frozen = text_encoder_flops() + teacher_flops(teacher_px)
        # bf16 activations kept for backward, per block (Korthikanti et al. 2022, flash attention: ~34 * L * d bytes)
        act_block = 34.0 * seq * cfg.dim
        rows.append({"stage": stage, "image_tokens": image_tokens, "seq": seq, "train_tflop": flops / 1e12,
                     "attention_share": fwd["attention"] / fwd["total"], "samples_per_second": sps,
                     "batch": recipe.batch_size, "workers": recipe.num_workers, "samples": samples,
                     "gpu_hours": samples / sps / 3600, "frozen_tflop": frozen / 1e12, "teacher_px": teacher_px,
                     "act_full_gb": act_block * cfg.depth * recipe.batch_size / 1e9,
                     "act_ckpt_gb": (2.0 * seq * cfg.dim * cfg.depth + act_block) * recipe.batch_size / 1e9})
    return rows


def xl_feed_table(rows: list[dict], decode_ms: dict[int, float], noise_ms: dict[int, float]) -> list[dict]:
    """Per stage: the milliseconds per sample each feeding cost put on one H100's step before issue 16 and what
    remains now, from the XL rows of `xl_h100_estimates` and this CPU's measured decode and noise times.

    Before: the text encoder ran per sample, images were decoded on the step thread, noise was drawn on the CPU and
    copied from pageable memory, all in series with the DiT step. Now: text states come from the cache (no encoder
    call per step), decoding runs in `loader_workers` processes (off the step's path if they keep up: the cores per
    GPU needed are reported), noise is drawn on the device. The iREPA teacher still runs on every uncached sample.
    """
    achieved = MFU * H100_BF16_DENSE
    out = []
    for r in rows:
        px = int(r["stage"])
        step = 1e3 / r["samples_per_second"]
        text = 1e3 * text_encoder_flops() / achieved
        teacher = 1e3 * teacher_flops(r["teacher_px"]) / achieved
        decode = decode_ms[px]
        noise = noise_ms[px] + 1e3 * 3 * px * px * 4 / PAGEABLE_H2D
        before = step + text + teacher + decode + noise
        after = step + teacher
        samples = r["samples"]
        out.append({"stage": r["stage"], "step_ms": step, "text_ms": text, "teacher_ms": teacher,
                    "decode_ms": decode, "noise_ms": noise, "before_sps": 1e3 / before, "after_sps": 1e3 / after,
                    "cores_per_gpu": decode / after, "before_hours": samples * before / 3.6e6,
                    "after_hours": samples * after / 3.6e6, "dit_hours": samples * step / 3.6e6})
    return out


def text_cache_hours_per_million_rows() -> float:
    """H100-hours to fill the text-state cache for one million rows (every variant encoded once, 256 tokens)."""
    return 1e6 * VARIANTS * text_encoder_flops() / (MFU * H100_BF16_DENSE) / 3600


def xl_table_lines(rows: list[dict]) -> list[str]:
    """The XL-on-one-H100 compute and memory table (one line per stage of `xl_h100_estimates`)."""
    lines = ["| stage px | image tokens | sequence | train TFLOP/sample | attention share | DiT samples/s per H100 | "
             "recipe: batch/GPU x GPUs, samples | DiT GPU-hours for the stage | frozen encoders TFLOP/sample "
             "(uncached) | activations GB/GPU: kept / with checkpointing |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | --- |"]
    for e in rows:
        lines.append(f"| {e['stage']} | {e['image_tokens']} | {e['seq']} | {e['train_tflop']:.2f} | "
                     f"{e['attention_share']:.0%} | {e['samples_per_second']:.0f} | {e['batch']} x {e['workers']}, "
                     f"{e['samples'] / 1e6:.1f} M | {e['gpu_hours']:,.0f} | {e['frozen_tflop']:.2f} "
                     f"({e['frozen_tflop'] / e['train_tflop']:.1f}x the step) | {e['act_full_gb']:.0f} / "
                     f"{e['act_ckpt_gb']:.1f} |")
    return lines
