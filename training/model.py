"""A single-stream diffusion transformer (Krea 2 style) and the iREPA projector and loss.

One joint sequence [text tokens ; image tokens] runs through `depth` identical blocks:

    x   = [RMSNorm+Linear(text) ; PatchEmbed(x_t)]                    [B, L+N, D]
    mod = Linear(SiLU(TimestepMLP(t)))                                 [B, 6, D]   one projection shared by all blocks
    per block i (offset_i is a learned [6, D] table, adaLN-single):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod + offset_i
        x = x + gate_a * Attention(RMSNorm(x) * (1 + scale_a) + shift_a)
        x = x + gate_m * SwiGLU(RMSNorm(x) * (1 + scale_m) + shift_m)
    Attention: grouped-query (heads q, kv_heads k/v), QK-RMSNorm, 2-D RoPE on image tokens (row, col) and none on
    text tokens (angle 0), padded text tokens masked out as keys, output * sigmoid(Linear(x)) before the o-proj.

The output head maps image tokens back to patches. With `prediction='x'` (JiT: predict the clean image in pixel
space) the prediction is turned into a velocity, so the model always returns a velocity for the rectified flow
x_t = (1 - t) x_0 + t noise, v = noise - x_0.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from training.config import ModelConfig


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension, with an optional learned scale."""

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return out * self.weight if self.weight is not None else out


def rope_2d_angles(rows: torch.Tensor, cols: torch.Tensor, head_dim: int, theta: float) -> torch.Tensor:
    """Rotation angles [N, head_dim/2]: the first half of the rotated pairs follows `rows`, the second `cols`."""
    quarter = head_dim // 4
    freqs = theta ** (-torch.arange(quarter, dtype=torch.float32, device=rows.device) / quarter)  # [hd/4]
    return torch.cat([rows.float()[:, None] * freqs, cols.float()[:, None] * freqs], dim=-1)  # [N, hd/2]


def image_grid_angles(h: int, w: int, head_dim: int, theta: float,
                      device: torch.device | None = None) -> torch.Tensor:
    """RoPE angles [h*w, head_dim/2] of a row-major h x w token grid."""
    rows = torch.arange(h, device=device).repeat_interleave(w)
    cols = torch.arange(w, device=device).repeat(h)
    return rope_2d_angles(rows, cols, head_dim, theta)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs of the last dim of x [B, S, H, hd] by angles [S, hd/2] (angle 0 = identity)."""
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)  # [B, S, H, hd/2, 2]
    cos, sin = angles.cos()[None, :, None], angles.sin()[None, :, None]  # [1, S, 1, hd/2]
    x0, x1 = pairs[..., 0], pairs[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


class Attention(nn.Module):
    """Grouped-query self-attention with QK-RMSNorm, RoPE, a key mask and an optional sigmoid output gate."""

    def __init__(self, dim: int, heads: int, kv_heads: int, qk_norm: bool = True, gated: bool = True) -> None:
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.wq = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(heads * self.head_dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else nn.Identity()
        self.gate = nn.Linear(dim, heads * self.head_dim) if gated else None

    def forward(self, x: torch.Tensor, angles: torch.Tensor | None, key_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, S, D]; angles [S, hd/2] or None; key_mask [B, S] bool (True = may be attended to) or None."""
        b, s, _ = x.shape
        q = self.q_norm(self.wq(x).view(b, s, self.heads, self.head_dim))
        k = self.k_norm(self.wk(x).view(b, s, self.kv_heads, self.head_dim))
        v = self.wv(x).view(b, s, self.kv_heads, self.head_dim)
        if angles is not None:
            q, k = apply_rope(q, angles), apply_rope(k, angles)
        mask = key_mask[:, None, None, :] if key_mask is not None else None  # [B, 1, 1, S]
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, enable_gqa=self.kv_heads != self.heads)
        out = out.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)  # [B, S, H*hd]
        if self.gate is not None:
            out = out * torch.sigmoid(self.gate(x))
        return self.wo(out)


class SwiGLU(nn.Module):
    """SiLU-gated MLP; hidden width 2/3 * mlp_ratio * dim rounded up to a multiple of 8."""

    def __init__(self, dim: int, mlp_ratio: float) -> None:
        super().__init__()
        hidden = int(math.ceil(2 * mlp_ratio * dim / 3 / 8) * 8)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    """Single-stream block over the joint sequence, modulated by the shared timestep projection + its own offset."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d = config.dim
        self.norm1 = RMSNorm(d, affine=False)
        self.attn = Attention(d, config.heads, config.kv_heads, config.qk_norm, config.gated_attention)
        self.norm2 = RMSNorm(d, affine=False)
        self.mlp = SwiGLU(d, config.mlp_ratio)
        self.mod_offset = nn.Parameter(torch.randn(6, d) / d**0.5)  # adaLN-single per-block table [6, D]

    def forward(self, x: torch.Tensor, mod: torch.Tensor, angles: torch.Tensor | None,
                key_mask: torch.Tensor | None) -> torch.Tensor:
        """x [B, S, D]; mod [B, 6, D] (shared); returns [B, S, D]."""
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (mod + self.mod_offset).unsqueeze(2).unbind(1)
        x = x + gate_a * self.attn(self.norm1(x) * (1 + scale_a) + shift_a, angles, key_mask)
        return x + gate_m * self.mlp(self.norm2(x) * (1 + scale_m) + shift_m)


def timestep_features(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal features [B, dim] of t in [0, 1] (scaled by 1000 like DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class DiT(nn.Module):
    """Single-stream text-to-image diffusion transformer (see the module docstring)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        d, p, c = config.dim, config.patch_size, config.in_channels
        patch_dim = c * p * p
        if config.patch_bottleneck:
            self.patch_embed = nn.Sequential(nn.Linear(patch_dim, config.patch_bottleneck, bias=False),
                                             nn.Linear(config.patch_bottleneck, d))
        else:
            self.patch_embed = nn.Sequential(nn.Linear(patch_dim, d))
        self.text_proj = nn.Sequential(RMSNorm(config.text_dim), nn.Linear(config.text_dim, d))
        self.time_mlp = nn.Sequential(nn.Linear(config.time_freq_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.mod_shared = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))  # the one shared adaLN projection
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.depth))
        self.final_norm = RMSNorm(d, affine=False)
        self.final_offset = nn.Parameter(torch.randn(2, d) / d**0.5)
        self.final = nn.Linear(d, patch_dim)
        self.gradient_checkpointing = False
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.time_mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_mlp[2].weight, std=0.02)
        nn.init.normal_(self.mod_shared[1].weight, std=0.02)
        nn.init.zeros_(self.final.weight)
        nn.init.zeros_(self.final.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, (H/p)*(W/p), p*p*C] (row-major token grid)."""
        b, c, h, w = x.shape
        p = self.config.patch_size
        if h % p or w % p:
            raise ValueError(f"image {h}x{w} is not divisible by patch size {p}")
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def unpatchify(self, tokens: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """[B, h*w, p*p*C] -> [B, C, h*p, w*p]."""
        b = tokens.shape[0]
        p, c = self.config.patch_size, self.config.in_channels
        x = tokens.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h * p, w * p)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text_tokens: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Velocity prediction and the iREPA token grid.

        Args:
            x_t: noisy signal [B, C, H, W], H and W multiples of the patch size.
            t: times [B] in [0, 1] (1 = pure noise).
            text_tokens: text encoder states [B, L, text_dim] (None or L = 0: unconditional).
            text_mask: [B, L] bool, True for real tokens; padded (False) tokens are never attended to. None:
                every text token is real (no mask at all in attention).

        Returns:
            (velocity [B, C, H, W], image tokens after block `repa_depth` as a grid [B, D, H/p, W/p]).
        """
        cfg = self.config
        b, _, height, width = x_t.shape
        h, w = height // cfg.patch_size, width // cfg.patch_size
        img = self.patch_embed(self.patchify(x_t))  # [B, N, D]
        if text_tokens is None:
            text_tokens = x_t.new_zeros(b, 0, cfg.text_dim)
        n_text = text_tokens.shape[1]
        txt = self.text_proj(text_tokens.to(img.dtype))  # [B, L, D]
        seq = torch.cat([txt, img], dim=1)  # [B, L+N, D]
        # No mask (the caller knows when nothing is padded or dropped, without a device sync) lets SDPA pick its
        # flash kernel; a mask sends it to the memory-efficient one, still fused.
        key_mask = None
        if text_mask is not None:
            key_mask = torch.cat([text_mask.bool(), text_mask.new_ones(b, h * w, dtype=torch.bool)], dim=1)
        angles = torch.cat([torch.zeros(n_text, cfg.head_dim // 2, device=x_t.device),  # text: no rotation
                            image_grid_angles(h, w, cfg.head_dim, cfg.rope_theta, x_t.device)])
        t_emb = self.time_mlp(timestep_features(t, cfg.time_freq_dim).to(img.dtype))  # [B, D]
        mod = self.mod_shared(t_emb).view(b, 6, cfg.dim)  # [B, 6, D]
        repa = None
        for i, block in enumerate(self.blocks):
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                seq = checkpoint(block, seq, mod, angles, key_mask, use_reentrant=False)
            else:
                seq = block(seq, mod, angles, key_mask)
            if i + 1 == cfg.repa_depth:
                repa = seq[:, n_text:]
        shift, scale = (self.final_offset[None] + t_emb[:, None]).unsqueeze(2).unbind(1)
        out = self.final(self.final_norm(seq[:, n_text:]) * (1 + scale) + shift)  # [B, N, p*p*C]
        pred = self.unpatchify(out, h, w).float()
        if cfg.prediction == "x":
            pred = (x_t.float() - pred) / t.float().clamp(min=cfg.t_eps).view(b, 1, 1, 1)
        grid = repa.transpose(1, 2).reshape(b, cfg.dim, h, w)
        return pred, grid


class IREPAProjector(nn.Module):
    """Convolutional projector of the DiT token grid to the teacher's channels (iREPA): Conv3x3 -> SiLU -> Conv1x1."""

    def __init__(self, dim: int, teacher_dim: int, hidden: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(dim, hidden, 3, padding=1), nn.SiLU(), nn.Conv2d(hidden, teacher_dim, 1))

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        """[B, D, h, w] -> [B, teacher_dim, h, w]."""
        return self.net(grid)


def spatial_normalise(features: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per image and channel: subtract the spatial mean and divide by the spatial std. [B, C, h, w] -> same."""
    mean = features.mean(dim=(2, 3), keepdim=True)
    std = features.std(dim=(2, 3), keepdim=True, unbiased=False)
    return (features - mean) / (std + eps)


def irepa_loss(projected: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Negative cosine similarity between projected DiT tokens and spatially normalised teacher features.

    The teacher grid [B, C, h_t, w_t] is resized (bilinear) to the projected grid [B, C, h, w], then normalised per
    image and channel over space; the cosine is taken over channels at each position and averaged.
    """
    teacher = teacher.to(projected.dtype)
    if teacher.shape[-2:] != projected.shape[-2:]:
        teacher = F.interpolate(teacher, size=projected.shape[-2:], mode="bilinear", align_corners=False)
    teacher = spatial_normalise(teacher)
    return -F.cosine_similarity(projected.float(), teacher.float(), dim=1).mean()


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of `model` (only those with requires_grad if `trainable_only`)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
