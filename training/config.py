"""Configs of the DiT and of its training: frozen dataclasses, a table of model sizes and named training recipes.

Checkpoints store `dataclasses.asdict` of both configs, so every field is a plain int / float / str / bool / tuple /
dict (loadable with `torch.load(..., weights_only=True)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

PROMPT_VARIANTS = ("tags", "short", "medium", "long")


@dataclass(frozen=True)
class ModelConfig:
    """Shape of the single-stream diffusion transformer (see `training.model.DiT`)."""

    dim: int = 64
    """Width of the joint text+image token stream."""
    depth: int = 4
    """Number of single-stream blocks."""
    heads: int = 4
    """Query heads per attention layer (head_dim = dim // heads, a multiple of 4 for 2-D RoPE)."""
    kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide `heads`. `kv_heads == heads` is plain multi-head."""
    patch_size: int = 4
    """Side of the square patch that becomes one image token (pixel space: large, JiT-style; latent space: 2)."""
    in_channels: int = 3
    """Channels of the diffused signal: 3 in pixel space, the VAE's latent channels in latent space."""
    text_dim: int = 384
    """Width of the text encoder's token states (MiniLM: 384)."""
    mlp_ratio: float = 4.0
    """SwiGLU hidden width as a multiple of `dim` (before the usual 2/3 factor)."""
    qk_norm: bool = True
    """RMSNorm on queries and keys (per head) before RoPE."""
    gated_attention: bool = True
    """Multiply the attention output by sigmoid(Linear(x)) before the output projection."""
    patch_bottleneck: int = 0
    """Width of the bottleneck in the patch embedding (JiT: 128 for 16x16x3 patches); 0 = one linear layer."""
    prediction: str = "x"
    """What the network outputs: `x` (clean signal, JiT-style; converted to velocity) or `v` (velocity directly)."""
    t_eps: float = 0.05
    """Smallest t used when converting an x-prediction to a velocity, v = (x_t - x) / max(t, t_eps)."""
    repa_depth: int = 2
    """1-based index of the block whose output image tokens are aligned by iREPA (REPA convention)."""
    repa_teacher_dim: int = 1024
    """Channels of the iREPA teacher's spatial features (embedded open-NSFW ResNet: 1024)."""
    repa_hidden: int = 128
    """Hidden channels of the convolutional iREPA projector."""
    rope_theta: float = 100.0
    """RoPE base: the frequencies span grid distances up to about this many tokens."""
    time_freq_dim: int = 256
    """Width of the sinusoidal timestep features before the timestep MLP."""

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        if (self.dim // self.heads) % 4:
            raise ValueError(f"head_dim {self.dim // self.heads} must be a multiple of 4 for 2-D RoPE")
        if self.heads % self.kv_heads:
            raise ValueError(f"kv_heads {self.kv_heads} must divide heads {self.heads}")
        if not 1 <= self.repa_depth <= self.depth:
            raise ValueError(f"repa_depth {self.repa_depth} must be in [1, depth={self.depth}]")
        if self.prediction not in ("x", "v"):
            raise ValueError(f"prediction must be 'x' or 'v', got {self.prediction!r}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.dim // self.heads


SIZES: dict[str, ModelConfig] = {
    # A few hundred thousand parameters: trains 3 tiny curriculum stages on 2 CPU cores in minutes.
    "debug": ModelConfig(dim=64, depth=4, heads=4, kv_heads=2, patch_size=4, repa_depth=2, repa_hidden=128),
    # DiT/SiT-like widths and depths; pixel space with 16 px patches and a 128-wide bottleneck (JiT).
    "S": ModelConfig(dim=384, depth=12, heads=6, kv_heads=2, patch_size=16, patch_bottleneck=128, repa_depth=4,
                     repa_hidden=1024),
    "B": ModelConfig(dim=768, depth=12, heads=12, kv_heads=4, patch_size=16, patch_bottleneck=128, repa_depth=4,
                     repa_hidden=2048),
    "L": ModelConfig(dim=1024, depth=24, heads=16, kv_heads=4, patch_size=16, patch_bottleneck=128, repa_depth=8,
                     repa_hidden=2048),
    "XL": ModelConfig(dim=1152, depth=28, heads=16, kv_heads=4, patch_size=16, patch_bottleneck=128, repa_depth=8,
                      repa_hidden=2048),
}


def model_config(size: str, **overrides: Any) -> ModelConfig:
    """The `SIZES[size]` config with some fields replaced (e.g. `in_channels=16, patch_size=2` for latents)."""
    if size not in SIZES:
        raise KeyError(f"unknown model size {size!r}; expected one of {sorted(SIZES)}")
    return replace(SIZES[size], **overrides)


def param_count(config: ModelConfig) -> int:
    """Exact parameter count of `DiT(config)` (built on the meta device: no memory, milliseconds).

    The iREPA projector is a separate module used only in training and is not counted.
    """
    import torch

    from training.model import DiT

    with torch.device("meta"):
        model = DiT(config)
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class TrainConfig:
    """One curriculum stage of training (see `training.trainer.train`)."""

    stage_size: int = 32
    """Training resolution: each aspect bucket is rescaled to an area of about stage_size² (sides rounded to the
    patch size); 0 keeps the shards' own sizes."""
    steps: int = 100
    """Optimizer steps of this stage (a resumed run continues up to this count)."""
    batch_size: int = 8
    """Images per step per worker (all from one aspect bucket)."""
    lr: float = 1e-3
    """Peak AdamW learning rate (after warmup; constant afterwards)."""
    warmup_steps: int = 10
    """Linear learning-rate warmup steps."""
    weight_decay: float = 0.0
    """AdamW weight decay (applied to matrices only, not to norms, biases and modulation offsets)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights (warmed up as min(decay, (1+s)/(10+s)))."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 disables."""
    repa_weight: float = 0.5
    """Weight of the iREPA alignment loss; 0 disables it (and the teacher)."""
    logit_normal_mean: float = 0.0
    """Mean of the logit-normal timestep distribution (t=1 is pure noise here: > 0 shifts towards noise)."""
    logit_normal_std: float = 1.0
    """Std of the logit-normal timestep distribution."""
    cfg_dropout: float = 0.1
    """Probability of dropping a sample's text (all text tokens masked) for classifier-free guidance."""
    log_every: int = 10
    """Write one metrics.jsonl line (mean over the window) every this many steps (and at the last step)."""
    checkpoint_every: int = 50
    """Write checkpoint.pt every this many steps (and at the last step)."""
    seed: int = 0
    """Seed of the weights init, the data order, the noise and timesteps."""
    precision: str = "fp32"
    """`bf16` (autocast, CUDA only; ignored on CPU with a warning) or `fp32`."""
    activation_checkpointing: bool = False
    """Recompute each block's activations in the backward pass (torch.utils.checkpoint) to save memory."""
    prompt_length_distribution: dict[str, float] = field(
        default_factory=lambda: {"tags": 0.1, "short": 0.3, "medium": 0.3, "long": 0.3})
    """Probability of training on each prompt variant (caption_<variant> column); empty ones fall back to the next."""
    text_encoder: str = "minilm"
    """`minilm` (bundled all-MiniLM-L6-v2), `hash` (parameter-free, tests/benchmarks only) or a local model dir."""
    text_layers: tuple[int, ...] = (-1,)
    """Hidden layers of a local text model that are fused (mean of RMS-normalised layers); MiniLM uses the last."""
    text_max_length: int = 64
    """Most text tokens per prompt (longer prompts are truncated)."""
    teacher: str = "embedded"
    """iREPA teacher: `embedded` (open-NSFW ResNet, bundled), `none`, or a local DINOv2/ViT directory."""
    space: str = "pixel"
    """`pixel` (default, JiT-style) or `latent` (diffusers AutoencoderKL from `vae_path`)."""
    vae_path: str = ""
    """Local directory of a diffusers AutoencoderKL (latent space only)."""
    latent_cache_dir: str = ""
    """Where per-shard latent caches go; empty = beside each local shard, or <tmp>/atelier-latents on the training
    node for shards given as URIs (object storage)."""
    text_cache_dir: str = ""
    """Where per-shard text state caches go (`training.text_cache`); empty = beside each local shard, or
    <tmp>/atelier-text-states on the training node for shards given as URIs."""
    threads: int = 0
    """torch intra-op CPU threads of each training process; 0 keeps torch's default (tiny models: use 1)."""
    loader_workers: int = 2
    """DataLoader worker processes per training process that decode and resize images; 0 decodes on the step's
    thread."""
    loader_prefetch: int = 2
    """Batches each loader worker decodes ahead of the step."""
    num_workers: int = 1
    """Ray Train workers (one process each)."""
    use_gpu: bool = False
    """One GPU per Ray Train worker."""
    strategy: str = "ddp"
    """Data parallelism with more than one worker: `ddp` or `fsdp` (FSDP2 fully_shard per block)."""
    preview_prompts: tuple[str, ...] = ()
    """Prompts sampled with the EMA weights at the end of the stage into <out_dir>/samples.png; empty = none."""
    preview_steps: int = 20
    """Euler steps of the preview samples."""
    preview_cfg_scale: float = 3.0
    """Classifier-free guidance scale of the preview samples."""

    def __post_init__(self) -> None:
        unknown = set(self.prompt_length_distribution) - set(PROMPT_VARIANTS)
        if unknown:
            raise ValueError(f"unknown prompt variants {sorted(unknown)}; expected {PROMPT_VARIANTS}")
        if sum(self.prompt_length_distribution.values()) <= 0:
            raise ValueError("prompt_length_distribution must have a positive total")
        if self.space not in ("pixel", "latent"):
            raise ValueError(f"space must be 'pixel' or 'latent', got {self.space!r}")
        if self.space == "latent" and not self.vae_path:
            raise ValueError("space='latent' needs vae_path (a local diffusers AutoencoderKL directory)")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be 'bf16' or 'fp32', got {self.precision!r}")
        if self.loader_workers < 0 or self.loader_prefetch < 1:
            raise ValueError("loader_workers must be >= 0 and loader_prefetch >= 1")
        if self.strategy not in ("ddp", "fsdp"):
            raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {self.strategy!r}")


# Demo: decoding 8 tiny PNGs takes about a millisecond, less than a loader process costs on 2 cores.
_DEMO = dict(steps=100, batch_size=8, threads=1, loader_workers=0, lr=2e-3, warmup_steps=10, log_every=10,
             checkpoint_every=50, preview_prompts=("a photo", "a painting"), preview_steps=16)
_PRODUCTION = dict(lr=1e-4, warmup_steps=1000, weight_decay=0.0, ema_decay=0.9999, precision="bf16",
                   logit_normal_mean=0.8, logit_normal_std=0.8, repa_weight=0.5, log_every=100,
                   checkpoint_every=2000, use_gpu=True, num_workers=8, activation_checkpointing=True,
                   loader_workers=8, text_layers=(-1, -4, -8), text_max_length=256,
                   preview_prompts=("a photo of a cat",))


def recipes() -> dict[str, TrainConfig]:
    """Named TrainConfig presets: `demo-32/48/64` (CPU demo curriculum, `demo` = `demo-32`) and `256/512/1024`.

    The production recipes assume 8 GPUs per stage and a local text-encoder/teacher setup of your choice
    (`text_encoder`, `teacher` still default to the embedded models; override them with local directories).
    Logit-normal mean 0.8 with std 0.8 follows JiT's pixel-space choice (-0.8 in its t=1-is-data convention).
    """
    demo = {f"demo-{s}": TrainConfig(stage_size=s, **_DEMO) for s in (32, 48, 64)}
    production = {
        "256": TrainConfig(stage_size=256, steps=400_000, batch_size=128, **_PRODUCTION),
        "512": TrainConfig(stage_size=512, steps=100_000, batch_size=64, **_PRODUCTION),
        "1024": TrainConfig(stage_size=1024, steps=50_000, batch_size=16, **_PRODUCTION),
    }
    return {"demo": demo["demo-32"], **demo, **production}


CURRICULA: dict[str, tuple[str, ...]] = {
    "demo": ("demo-32", "demo-48", "demo-64"),
    "full": ("256", "512", "1024"),
}
"""Curriculum name -> recipe names of its stages, in order (each stage starts from the previous checkpoint)."""


def config_from_dict(cls: type, data: dict[str, Any]):
    """Rebuild a ModelConfig / TrainConfig from `asdict` output (lists back to tuples; unknown keys rejected)."""
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    return cls(**values)
