"""Two `curate run` on one storage: the second exits 2 with one line (or waits with --wait); a killed holder frees
the storage at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from orchestration.cli import main
from orchestration.run_lock import StorageBusy, storage_run_lock
from tests.security.hostile import REPO

HOLD = """
import sys, time
from orchestration.run_lock import storage_run_lock
with storage_run_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(storage, seconds):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, storage, str(seconds)], cwd=REPO, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_exits_2_with_one_line(tmp_path, capsys):
    storage = str(tmp_path / "storage")
    holder = _holder(storage, 60)
    try:
        code = main(["run", "--storage", storage, "--source", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
        assert err.startswith("curate run: another `curate run` is using") and f"pid {holder.pid}" in err
        assert not (tmp_path / "storage" / ".dagster").exists()  # stopped before touching the instance
    finally:
        holder.kill()
        holder.wait()


def test_wait_queues_behind_the_holder_and_a_killed_holder_frees_the_lock(tmp_path):
    storage = str(tmp_path / "s")
    holder = _holder(storage, 1.5)
    start = time.monotonic()
    with storage_run_lock(storage, wait=True):
        assert holder.poll() is not None or time.monotonic() - start >= 1.0
    holder.wait()
    killed = _holder(storage, 60)
    with pytest.raises(StorageBusy):
        with storage_run_lock(storage):
            pass
    os.kill(killed.pid, signal.SIGKILL)
    killed.wait()
    with storage_run_lock(storage):  # no stale lock: the kernel released it with the process
        pass
