"""Starting or joining Ray. Work runs through `orchestration/stage_runner.py`, the one code that knows actors."""

from __future__ import annotations

import logging
import os
import time
from typing import Any


def init_ray(num_cpus: int | None = None, **options: Any) -> bool:
    """Start (or join) Ray once per process; returns True if this call started it.

    `RAY_ADDRESS` in the environment joins an existing cluster; otherwise an embedded local cluster is started with
    the machine's CPUs.
    """
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "logging_level": logging.WARNING, **options}
    if not os.environ.get("RAY_ADDRESS"):
        kwargs.setdefault("num_cpus", num_cpus or os.cpu_count() or 1)
        kwargs.setdefault("include_dashboard", False)
    ray.init(**kwargs)
    return True


def cluster_cpus() -> float:
    """CPUs of the connected cluster."""
    import ray

    return float(ray.cluster_resources().get("CPU", 1.0))


class Throughput:
    """Items per second since construction."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def elapsed(self) -> float:
        """Seconds since construction."""
        return time.perf_counter() - self.start

    def per_second(self, items: int) -> float:
        """Rate over the elapsed wall time."""
        elapsed = self.elapsed()
        return items / elapsed if elapsed > 0 else 0.0
