"""Shared measuring helpers of the benchmarks (run as `python bench/<name>.py`, so this imports as `measure`)."""

from __future__ import annotations

import threading
import time

import psutil


class PeakRss:
    """Peak resident memory, sampled in a thread: of this process, or with `tree=True` of it and its descendants
    (Ray workers, pool processes)."""

    def __init__(self, tree: bool = False, interval: float = 0.05) -> None:
        self.peak = 0
        self.tree = tree
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *(me.children(recursive=True) if self.tree else [])]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass  # a worker that exited between listing and reading
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
