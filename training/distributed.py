"""Several training processes on this machine without Ray: a torchrun-style launcher of `train_loop_per_worker`.

Each process joins one gloo (CPU) or NCCL (GPU) process group over a free local port and runs the same loop Ray
Train runs in its workers, so tests and benchmarks exercise the DDP / FSDP code paths in seconds, and a test can
SIGKILL one rank as a node failure would.
"""

from __future__ import annotations

import datetime
import os
import socket
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    """A TCP port nothing listens on now (for the process group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, config: dict[str, Any], results: Any,
            on_checkpoint: Callable[[int, int], None] | None, timeout_s: float) -> None:
    from training.trainer import train_loop_per_worker

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    backend = "nccl" if config["train_config"].get("use_gpu") and torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=timeout_s))
    try:
        hook = (lambda step: on_checkpoint(rank, step)) if on_checkpoint is not None else None
        result = train_loop_per_worker(config, on_checkpoint=hook)
        results.put((rank, result))
    finally:
        dist.destroy_process_group()


def launch_local(config: dict[str, Any], world: int, *, on_checkpoint: Callable[[int, int], None] | None = None,
                 timeout_s: float = 120.0, start_method: str = "fork") -> tuple[mp.ProcessContext, Any]:
    """Start `world` processes running `train_loop_per_worker(config)`; returns (process context, result queue).

    Args:
        config: the worker config (see `train_loop_per_worker`).
        world: number of processes (ranks).
        on_checkpoint: `f(rank, step)`, called on rank 0 after each checkpoint.
        timeout_s: collective timeout: a rank whose peer died fails after this long.
        start_method: `fork` (fast; CPU) or `spawn` (needed once CUDA is initialised in the caller).
    """
    ctx = mp.get_context(start_method)
    results = ctx.SimpleQueue()
    context = mp.start_processes(_worker, args=(world, free_port(), config, results, on_checkpoint, timeout_s),
                                 nprocs=world, join=False, start_method=start_method)
    return context, results


def run_local(config: dict[str, Any], world: int, **kwargs: Any) -> list[dict[str, Any]]:
    """`launch_local`, waited for; the TrainResult dicts of every rank, in rank order (raises if a rank failed)."""
    context, results = launch_local(config, world, **kwargs)
    while not context.join():
        pass
    out = dict(results.get() for _ in range(world))
    return [out[r] for r in range(world)]
