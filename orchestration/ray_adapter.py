"""Starting or joining Ray. Work runs through `orchestration/stage_runner.py`, the one code that knows actors."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

LISTEN_ALL_ENV = "ATELIER_RAY_LISTEN_ALL"
"""Set to 1 (`curate run --ray-listen-all`) to let an embedded Ray listen on the node's address, not loopback only."""
_RAY_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def _keep_embedded_ray_on_loopback() -> None:
    """Make an embedded Ray bind every server (GCS, raylet, workers, agents) to 127.0.0.1.

    Ray (2.60) binds its gRPC servers to the wildcard address unless the node's IP is loopback, and `ray.init` turns
    an explicit 127.0.0.1 into the machine's address. Its single-machine mode (the default on macOS/Windows,
    `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`) keeps the node on loopback; the constant is read when `ray` is imported,
    so it is also set on the module in case `ray` was imported before this call.
    """
    os.environ[_RAY_LOOPBACK_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def init_ray(num_cpus: int | None = None, **options: Any) -> bool:
    """Start (or join) Ray once per process; returns True if this call started it.

    `RAY_ADDRESS` in the environment joins an existing cluster; otherwise an embedded local cluster is started with
    the machine's CPUs, listening on loopback only (unless `ATELIER_RAY_LISTEN_ALL=1`).
    """
    import ray

    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"ignore_reinit_error": True, "logging_level": logging.WARNING, **options}
    if not os.environ.get("RAY_ADDRESS"):
        # nothing outside this machine can reach a loopback-only cluster, so Ray's token auth adds nothing here
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        if os.environ.get(LISTEN_ALL_ENV) != "1":
            _keep_embedded_ray_on_loopback()
        kwargs.setdefault("num_cpus", num_cpus or os.cpu_count() or 1)
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("dashboard_host", "127.0.0.1")
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
