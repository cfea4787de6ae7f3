"""Euler sampling of the rectified flow with classifier-free guidance, and a PNG grid of the samples.

Convention: x_t = (1 - t) x_0 + t noise, v = dx_t/dt = noise - x_0. Sampling integrates from t = 1 (noise) to
t = 0: x <- x + (t_next - t) v. The unconditional branch masks every text token (as the CFG text dropout of
training does).
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch
from PIL import Image

from training.latent import LatentCodec
from training.model import DiT
from training.text import TextEncoder


def time_grid(steps: int, shift: float = 1.0) -> torch.Tensor:
    """steps+1 times from 1 to 0; shift > 1 spends more steps at high noise (SD3-style t' = s t / (1 + (s-1) t))."""
    t = torch.linspace(1.0, 0.0, steps + 1)
    return shift * t / (1 + (shift - 1) * t)


@torch.no_grad()
def sample(model: DiT, text_encoder: TextEncoder, prompts: list[str], size: int | tuple[int, int] = 32,
           steps: int = 20, cfg_scale: float = 3.0, seed: int = 0, *, shift: float = 1.0,
           vae: LatentCodec | None = None) -> torch.Tensor:
    """Generate one image per prompt.

    Args:
        model: the DiT (its EMA copy for best results); its device is used.
        text_encoder: the encoder it was trained with.
        prompts: one prompt per image.
        size: side in pixels, or (width, height); multiples of the patch size (times the VAE factor).
        steps: Euler steps.
        cfg_scale: guidance scale (1 = no guidance, one forward per step).
        seed: noise seed.
        shift: timestep shift (see `time_grid`).
        vae: decode latents with this codec (latent-space models).

    Returns:
        Images [B, 3, H, W] in [-1, 1] (float32, CPU).
    """
    width, height = (size, size) if isinstance(size, int) else size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    factor = vae.factor if vae is not None else 1
    channels = model.config.in_channels
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(prompts), channels, height // factor, width // factor, generator=generator).to(device)
    text, mask = text_encoder.encode(list(prompts))
    text, mask = text.to(device), mask.to(device)
    guided = cfg_scale != 1.0
    if guided:
        text, mask = torch.cat([text, text]), torch.cat([mask, torch.zeros_like(mask)])
    times = time_grid(steps, shift).to(device)
    for i in range(steps):
        t, t_next = times[i], times[i + 1]
        x_in = torch.cat([x, x]) if guided else x
        v, _ = model(x_in, t.expand(x_in.shape[0]), text, mask)
        if guided:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + cfg_scale * (v_cond - v_uncond)
        x = x + (t_next - t) * v
    model.train(was_training)
    if vae is not None:
        x = vae.decode(x)
    return x.float().clamp(-1, 1).cpu()


def sample_grid_png(images: torch.Tensor | list[Image.Image], ncols: int | None = None, pad: int = 2) -> bytes:
    """PNG bytes of a grid of images ([B, 3, H, W] in [-1, 1], or PIL images of one size)."""
    if isinstance(images, torch.Tensor):
        arrays = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte()
        pil = [Image.fromarray(a.permute(1, 2, 0).numpy(), "RGB") for a in arrays]
    else:
        pil = [img.convert("RGB") for img in images]
    if not pil:
        raise ValueError("no images for the grid")
    w, h = pil[0].size
    ncols = ncols or math.ceil(math.sqrt(len(pil)))
    nrows = math.ceil(len(pil) / ncols)
    grid = Image.new("RGB", (ncols * w + (ncols + 1) * pad, nrows * h + (nrows + 1) * pad), (255, 255, 255))
    for i, img in enumerate(pil):
        r, c = divmod(i, ncols)
        grid.paste(img.resize((w, h)) if img.size != (w, h) else img, (pad + c * (w + pad), pad + r * (h + pad)))
    buf = io.BytesIO()
    grid.save(buf, "PNG")
    return buf.getvalue()


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [-1, 1] -> uint8 [B, H, W, 3]."""
    return ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
