"""The stage's yardstick: the flow-matching loss of the EMA weights on one batch with everything random fixed."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from training.data import ShardDataset

EVAL_SEED = 20_261_130
EVAL_IMAGES = 16
"""Images of the trainer's fixed batch (one bucket), whatever the batch size and number of workers."""
EVAL_TIMES = 4
"""Each held-out image is scored at this many fixed times t (a stratified grid over (0, 1))."""


def fixed_eval_batch(dataset: ShardDataset, text_encoder: Any, latent_cache: Any, device: torch.device,
                     mean: float = 0.0, std: float = 1.0, max_images: int = 32) -> dict[str, torch.Tensor]:
    """One batch with everything random fixed (images, prompts, noise, t), so its loss moves only with the weights.

    The training loss of a window mixes in the luck of its timesteps and images; late in a curriculum stage that noise
    is larger than the progress. This batch is the stage's yardstick (`eval_loss` in metrics.jsonl). Built from
    every shard (not a rank's share), it is the same batch for any number of workers.
    """
    batch = next(iter(dataset))
    x0 = latent_cache.for_batch(batch) if latent_cache is not None else batch["images"]
    x0 = x0[:max_images]
    text, mask = text_encoder.encode(batch["prompts"][:max_images])
    text, mask = text.cpu(), mask.cpu()
    b = x0.shape[0]
    generator = torch.Generator().manual_seed(EVAL_SEED)
    x0, text, mask = (v.repeat_interleave(EVAL_TIMES, 0) for v in (x0, text, mask))
    # the training distribution's quantiles (logit-normal), not a uniform grid: near t = 0 an x-prediction's error is
    # amplified up to 1 / t_eps and would drown the signal
    quantiles = (torch.arange(b * EVAL_TIMES, dtype=torch.float64) + 0.5) / (b * EVAL_TIMES)
    t = torch.sigmoid(mean + std * torch.special.ndtri(quantiles)).float()
    t = t[torch.randperm(len(t), generator=generator)]
    noise = torch.randn(x0.shape, generator=generator)
    out = {"x0": x0, "t": t, "noise": noise, "text": text}
    if not bool(mask.all()):  # no mask at all when nothing is padded (the fused attention kernels)
        out["mask"] = mask
    return {k: v.to(device) for k, v in out.items()}


@torch.no_grad()
def eval_loss(model: nn.Module, batch: dict[str, torch.Tensor], autocast: Callable[[], Any] = nullcontext) -> float:
    """Flow-matching loss of a DiT (the EMA weights in training) on a `fixed_eval_batch`."""
    was_training = model.training
    model.eval()
    tb = batch["t"].view(-1, 1, 1, 1)
    x_t = (1 - tb) * batch["x0"] + tb * batch["noise"]
    with autocast():
        velocity = model(x_t, batch["t"], batch["text"], batch.get("mask"))[0]
    model.train(was_training)
    return float(F.mse_loss(velocity.float(), (batch["noise"] - batch["x0"]).float()))
