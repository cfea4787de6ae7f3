"""Process-level pieces of the trainer: rank and device, per-step seeds, phase timing, fixed preview prompts."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from training.config import TrainConfig

log = logging.getLogger(__name__)


def sample_timesteps(n: int, mean: float, std: float, generator: torch.Generator | None = None,
                     device: torch.device | str = "cpu") -> torch.Tensor:
    """Logit-normal times in (0, 1): sigmoid(N(mean, std²)), drawn on `device`."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of every random draw of one step of one rank (a resumed run redraws exactly the same)."""
    return (seed * 1_000_003 + rank * 7919) * 1_000_033 + step


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def train_device(train_cfg: TrainConfig) -> torch.device:
    """This process's GPU when the stage asks for one and CUDA is there, else the CPU (with a warning)."""
    if train_cfg.use_gpu and torch.cuda.is_available():
        if "LOCAL_RANK" in os.environ and not (dist.is_available() and dist.is_initialized()):
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda", torch.cuda.current_device())
    if train_cfg.use_gpu:
        log.warning("use_gpu=True but CUDA is not available: training on CPU")
    return torch.device("cpu")


PHASES = ("data", "text", "forward", "backward", "optimizer", "ema")
"""Parts of a step timed by `train(..., profile=True)` (metrics keys `time_<phase>`, seconds per step)."""


class PhaseTimer:
    """Wall time per step phase; synchronises the device at each boundary, so only for profiling runs."""

    def __init__(self, device: torch.device, enabled: bool) -> None:
        self.enabled = enabled
        self.sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        self.totals = dict.fromkeys(PHASES, 0.0)
        self.last = 0.0

    def start(self) -> None:
        if self.enabled:
            self.sync()
            self.last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self.enabled:
            self.sync()
            now = time.perf_counter()
            self.totals[phase] += now - self.last
            self.last = now

    def pop(self, steps: int) -> dict[str, float]:
        if not self.enabled:
            return {}
        out = {f"time_{k}": v / steps for k, v in self.totals.items()}
        self.totals = dict.fromkeys(PHASES, 0.0)
        return out


class FixedTexts:
    """Fixed prompts' states computed before the text encoder is freed (for the end-of-stage preview)."""

    def __init__(self, encoder: Any, prompts: Sequence[str]) -> None:
        self.dim = encoder.dim
        states, mask = encoder.encode(list(prompts))
        self._rows = {p: (states[i].cpu(), mask[i].cpu()) for i, p in enumerate(prompts)}

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [self._rows[p] for p in prompts]
        return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
