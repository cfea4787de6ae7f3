"""`curate run`, `curate demo` and `curate ui`."""

from __future__ import annotations

import argparse
import os
import posixpath
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orchestration.cli.config import load_config
from orchestration.cli.pipeline import (
    PipelineFailed,
    UsageError,
    checks_passed,
    dagster_home_for,
    failures,
    run_pipeline,
    summary_lines,
)


def check_storage(storage: str) -> None:
    """A local storage root must be a directory (or not exist yet).

    Raises:
        UsageError: it is a file or something else.
    """
    if "://" in storage:
        return
    path = Path(storage)
    if path.exists() and not path.is_dir():
        raise UsageError(f"--storage {storage}: exists and is not a directory")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"--storage {storage}: {parent} is not a directory")


def execute(command: str, sources: list[str], storage: str, config: dict[str, Any], select: str | None,
            verbose: bool, closing: Callable[[list[dict[str, Any]]], list[str]] | None = None,
            wait: bool = False) -> int:
    """Run the pipeline with its chatter in the command's log file; print the summary of every run; exit code."""
    from orchestration.cli.console import captured, log_path_for
    from orchestration.run_lock import storage_run_lock

    check_storage(storage)
    log = log_path_for(storage, command)
    with storage_run_lock(storage, wait=wait), captured(log, verbose) as term:
        summaries: list[dict[str, Any]] | None
        try:
            summaries = run_pipeline(sources, storage, config, select, terminal=term)
        except PipelineFailed as exc:
            summaries = exc.summaries
        except UsageError:
            raise
        except Exception as exc:  # an error outside any Dagster run: one line here, the traceback in the log
            traceback.print_exc()
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            term.print(f"curate {command}: {type(exc).__name__}: {first}")
            summaries = None
        term.drain()  # the warnings of the last run above the summary, not below it
        if summaries is not None:
            term.print()
            for line in summary_lines(summaries):
                term.print(line)
            for line in (closing(summaries) if closing else []):
                term.print(line)
        code = 0 if summaries is not None and checks_passed(summaries) else 1
        if summaries is not None and code:
            failed = failures(summaries)
            checks = sum(1 for s in summaries if "check" in s and not s["passed"] and s["severity"] != "WARN")
            term.print(f"curate {command}: {len(failed)} run(s) failed or skipped, {checks} error check(s) failed")
        term.print(f"log: {_publish_log(log, storage)}")
    return code


def _publish_log(log: str, storage: str) -> str:
    """The log's final place: as it is for local storage, uploaded under `<storage>/_logs/` for a URI root."""
    if "://" not in storage:
        return log
    from orchestration.storage import TableStore

    store = TableStore(storage)
    path = posixpath.join(store.base, "_logs", os.path.basename(log))
    try:
        with open(log, "rb") as f:
            store.write_bytes(path, f.read())
        return store.uri(path)
    except Exception:  # the run's outcome stands; the log stays local
        return log


def cmd_run(args: argparse.Namespace) -> int:
    check_storage(args.storage)
    config = load_config(args.config)
    if args.dry_run:
        from orchestration.cli.dry_run import dry_run

        return dry_run(args.source or [], args.storage, config, args.select)
    if args.ray_listen_all:
        from orchestration.ray_adapter import LISTEN_ALL_ENV

        os.environ[LISTEN_ALL_ENV] = "1"
    return execute("run", args.source or [], args.storage, config, args.select, args.verbose, wait=args.wait)


def demo_sources(corpus: Path) -> list[str]:
    """The source drops of the bundled sample corpus (each folder, tar and manifest)."""
    return [str(p) for p in sorted(corpus.iterdir()) if not p.name.startswith((".", "ATTRIBUTION"))]


def demo_closing(summaries: list[dict[str, Any]], storage: str) -> list[str]:
    """The demo's closing lines: where every input went, the shards and the DiT loss per stage, what to try next."""
    def dropped(asset: str) -> int:
        return sum(int(s["metadata"].get("dropped") or 0) for s in summaries
                   if "metadata" in s and s["asset"] == asset)

    total = sum(s["metadata"].get("total", 0) for s in summaries if "metadata" in s and s["asset"] == "source_images")
    curated = next((s["metadata"].get("curated_total") for s in summaries
                    if "metadata" in s and s["asset"] == "deduplicated_images"), None)
    lines = ["", f"{total} inputs: {dropped('source_images')} refused at ingest, {dropped('exclusion_signals')} "
             f"excluded by the filters, {dropped('deduplicated_images')} removed as duplicates (this run), "
             f"{curated if curated is not None else '?'} curated in all; every removal is in the decisions ledger."]
    shards = {s["partition"]: s["metadata"].get("dagster/row_count") for s in summaries
              if "metadata" in s and s["asset"] == "training_shards"}
    trained = {s["partition"]: s["metadata"] for s in summaries if "metadata" in s and s["asset"] == "dit_checkpoint"}
    if shards:
        losses = ", ".join(f"stage {k} loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}"
                           for k, m in trained.items())
        lines.append("Training shards: " + ", ".join(f"stage {k}: {v} images" for k, v in shards.items())
                     + f"; DiT: {losses or 'not trained'} (checkpoints under {storage}/dit_checkpoint/).")
    lines.append(f"Explore: curate lineage <sample_id or path> --storage {storage}   |   "
                 f"curate ui --storage {storage}")
    return lines


def cmd_demo(args: argparse.Namespace) -> int:
    from orchestration.package_data import examples_dir

    check_storage(args.storage)
    try:
        examples = examples_dir()
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    sources = demo_sources(examples / "corpus")
    config = load_config(str(examples / "demo.yaml"))
    print(f"curate demo: {len(sources)} source drops from {examples / 'corpus'} -> {args.storage}", flush=True)
    return execute("demo", sources, args.storage, config, None, args.verbose,
                   closing=lambda summaries: demo_closing(summaries, args.storage), wait=args.wait)


def cmd_ui(args: argparse.Namespace) -> int:
    import orchestration

    check_storage(args.storage)
    storage = str(Path(args.storage).resolve()) if "://" not in args.storage else args.storage
    env = dict(os.environ, ATELIER_STORAGE=storage)
    home = dagster_home_for(args.storage)
    if home:
        env["DAGSTER_HOME"] = home
    exe = Path(sys.executable).with_name("dagster")
    # the folder that holds the `orchestration` package: a checkout or site-packages, wherever the command runs from
    code_root = str(Path(orchestration.__file__).resolve().parents[1])
    cmd = [str(exe) if exe.exists() else "dagster", "dev", "-m", "orchestration.definitions", "-d", code_root,
           "-h", args.host, "-p", str(args.port)]
    # `dagster dev` inherits an ignored SIGINT from a backgrounded shell; restore it so SIGINT/SIGTERM stop the UI.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached
