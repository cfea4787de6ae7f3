"""What `curate run` shows: the plan, one live line per running stage, the warnings that matter and the summary.

Everything else that Dagster, Ray and the libraries print (Dagster's event lines, Ray's worker and core messages,
library warnings) goes to a per-command log file under the storage root. The capture is at the file-descriptor
level, so Ray's C++ core and the processes it spawns write there too; a file (not a pipe) so that a Ray process
outliving the command can never block on a full pipe. `-v` streams the whole log to the terminal as well.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import IO, Any

# Dagster's console lines: `<time> - dagster - WARNING - <job> - <run> - <step> - <message>`
_DAGSTER_LINE = re.compile(r" - dagster - (WARNING|ERROR|CRITICAL) - (?:[^ ]+ - ){0,3}(.*)")


def log_path_for(storage: str, command: str) -> str:
    """A fresh log file name: `<storage>/_logs/<command>-<time>-<pid>.log`, or a local temp file for a URI root
    (uploaded to `<storage>/_logs/` when the command ends)."""
    name = f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    if "://" in storage:
        folder = os.path.join(tempfile.gettempdir(), "atelier-logs")
    else:
        folder = os.path.join(storage, "_logs")
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, name)


_FAILURE_EVENTS = re.compile(r"\b(STEP_FAILURE|RUN_FAILURE|ASSET_FAILED)\b")


def warning_of(line: str) -> str | None:
    """The message of a Dagster WARNING/ERROR line (what the user must see), else None. Failure events are left
    out: the command's own FAILED lines name them, with their root cause."""
    match = _DAGSTER_LINE.search(line)
    if not match or _FAILURE_EVENTS.search(match.group(2)):
        return None
    return f"{match.group(1).lower()}: {match.group(2).strip()}"


class Terminal:
    """The user's terminal while the command's own chatter is captured; thread-safe line printing."""

    def __init__(self, stream: IO[str], verbose: bool = False, every_s: float = 5.0) -> None:
        self.stream = stream
        self.verbose = verbose
        self.every_s = every_s
        self.is_tty = bool(getattr(stream, "isatty", lambda: False)())
        self._lock = threading.Lock()
        self._live: Any = None
        self._lines: dict[str, str] = {}
        self._last_print: dict[str, float] = {}
        self.drain: Callable[[], Any] = lambda: None
        """Wait until the captured output so far has been forwarded (set while capturing)."""
        if self.is_tty:
            try:
                from rich.console import Console
                from rich.live import Live

                self._console = Console(file=stream, force_terminal=True, highlight=False, soft_wrap=True)
                self._live = Live(console=self._console, refresh_per_second=4, transient=True,
                                  redirect_stdout=False, redirect_stderr=False, get_renderable=self._render)
            except ImportError:  # rich comes with Dagster; without it a TTY gets the plain lines
                self._live = None

    def _render(self) -> Any:
        from rich.text import Text

        return Text("\n".join(self._lines.values()) or "")

    def start(self) -> None:
        if self._live is not None:
            self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()

    def print(self, line: str = "") -> None:
        """A permanent line (above the live lines on a TTY)."""
        with self._lock:
            if self._live is not None:
                self._console.print(line, markup=False, highlight=False)
            else:
                self.stream.write(line + "\n")
                self.stream.flush()

    def status(self, key: str, line: str, done: bool = False, elapsed: float = 0.0) -> None:
        """The live line of one running stage. On a TTY it is redrawn in place and goes when the stage is done;
        elsewhere a stage that runs longer than `every_s` prints a plain line at most every `every_s`, and its last
        one, so short stages stay silent."""
        if self._live is not None:
            with self._lock:
                if done:
                    self._lines.pop(key, None)
                else:
                    self._lines[key] = line
            return
        now = time.monotonic()
        printed = key in self._last_print
        if done and printed or not done and elapsed >= self.every_s and \
                now - self._last_print.get(key, -1e9) >= self.every_s:
            self._last_print[key] = now
            self.print(line)
        if done:
            self._last_print.pop(key, None)

    def clear(self, key: str) -> None:
        with self._lock:
            self._lines.pop(key, None)


def _user_stream() -> tuple[IO[str], int | None]:
    """Where the user's output goes once fd 1 is captured: a duplicate of the real stdout, or the current
    `sys.stdout` object when it is not fd 1 (pytest's capture, a StringIO)."""
    try:
        if sys.stdout.fileno() == 1:
            fd = os.dup(1)
            return io.TextIOWrapper(os.fdopen(fd, "wb", buffering=0), encoding="utf-8", errors="replace",
                                    line_buffering=True, write_through=True), fd
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return sys.stdout, None


class _Tail(threading.Thread):
    """Forwards the lines appended to the log file; `drain()` waits until what is written so far was forwarded."""

    def __init__(self, path: str, offset: int, forward: Callable[[str], None]) -> None:
        super().__init__(name="curate-log-tail", daemon=True)
        self.path, self.offset, self.forward = path, offset, forward
        self.stopping = threading.Event()

    def run(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            pending = b""
            while True:
                chunk = f.read(1 << 16)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        self.forward(raw.decode("utf-8", errors="replace").rstrip("\r"))
                    self.offset += len(chunk)
                    continue
                if self.stopping.is_set():
                    break
                time.sleep(0.1)
            if pending:
                self.forward(pending.decode("utf-8", errors="replace"))

    def drain(self, timeout_s: float = 3.0) -> None:
        end = os.path.getsize(self.path)
        deadline = time.monotonic() + timeout_s
        while self.offset < end and self.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)


def _flush(*streams: Any) -> None:
    for s in streams:
        try:
            s.flush()
        except (OSError, ValueError):
            pass


@contextmanager
def captured(log_path: str, verbose: bool = False, every_s: float = 5.0):
    """Send fds 1 and 2 (and `sys.stdout`/`sys.stderr`) to `log_path` while the block runs; yields the Terminal.

    Without `verbose`, Dagster's WARNING/ERROR lines are still shown (one line each); with it, every line is.
    """
    stream, dup_fd = _user_stream()
    terminal = Terminal(stream, verbose, every_s)
    for s in (sys.stdout, sys.stderr):
        try:
            s.flush()
        except (OSError, ValueError):
            pass
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    offset = os.fstat(log_fd).st_size
    log_text = io.TextIOWrapper(os.fdopen(os.dup(log_fd), "wb", buffering=0), encoding="utf-8",
                                errors="replace", line_buffering=True, write_through=True)
    old_stdout, old_stderr = sys.stdout, sys.stderr

    def forward(line: str) -> None:
        if verbose:
            terminal.print(line)
            return
        message = warning_of(line)
        if message:
            terminal.print(message if len(message) <= 300 else message[:297] + "...")

    tail = _Tail(log_path, offset, forward)
    try:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        sys.stdout = sys.stderr = log_text
        tail.start()
        terminal.start()
        terminal.drain = lambda: (_flush(sys.stdout, sys.stderr), tail.drain())
        yield terminal
    finally:
        for s in (sys.stdout, sys.stderr):
            try:
                s.flush()
            except (OSError, ValueError):
                pass
        sys.stdout, sys.stderr = old_stdout, old_stderr
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        tail.stopping.set()
        tail.join(timeout=5)
        terminal.stop()
        log_text.close()
        os.close(log_fd)
        if dup_fd is not None:
            stream.flush()
            stream.close()
