"""One `curate run` per storage at a time.

Two runs on one storage race in Dagster's instance database (two concurrent first-time migrations leave
`alembic_version has more than one head`, and the storage unusable) and in the stage partitions both would write.
`storage_run_lock` holds an `fcntl.flock` on `<storage>/.curate-run.lock` for the whole run: the kernel drops it when
the process ends however it ends (kill -9 included), so no stale lock outlives its run. A second run waits
(`--wait`) or stops at once with `StorageBusy` (the CLI prints one line and exits 2).

Object-store roots have no flock: there the lock file lives under `DAGSTER_HOME` (the shared instance) when set;
without it each run has an ephemeral instance and the per-asset locks of `TableStore.lock` are what keeps global
assets consistent.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

LOCK_NAME = ".curate-run.lock"


class StorageBusy(RuntimeError):
    """Another process holds the storage's run lock."""


def lock_path(storage: str) -> Path | None:
    """Where the run lock of a storage lives (None: nowhere shared to lock)."""
    if "://" not in storage or storage.startswith("file://"):
        return Path(storage.removeprefix("file://")).resolve() / LOCK_NAME
    home = os.environ.get("DAGSTER_HOME")
    return Path(home).resolve() / LOCK_NAME if home else None


@contextlib.contextmanager
def storage_run_lock(storage: str, wait: bool = False) -> Iterator[None]:
    """Hold the storage's run lock for the duration of the block.

    Args:
        storage: the storage root (a directory or URI).
        wait: block until the holder finishes instead of raising.

    Raises:
        StorageBusy: another run holds it and `wait` is False.
    """
    path = lock_path(storage)
    if path is None:
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise StorageBusy(f"another `curate run` is using {storage} ({_holder(fd)}); wait for it, or pass "
                              f"--wait to queue behind it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": datetime.datetime.now(datetime.UTC).isoformat()}).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _holder(fd: int) -> str:
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return "holder unknown"
    return f"pid {record.get('pid')} on {record.get('host')} since {record.get('since')}"
