"""The `curate` command: run, demo, inspect, ocr, opt-out, review, lineage, ui.

Split by concern: `config` (strict `--config` files), `pipeline` (Dagster runs and their summary), `console` (the
terminal and the per-command log), `dry_run`, `run_cmds`, `inspect_cmds`, `opt_out_cmds`.
"""

from __future__ import annotations

import argparse
import os
import sys

from orchestration.cli.config import ConfigError, load_config
from orchestration.cli.inspect_cmds import cmd_inspect, cmd_ocr, ocr_inputs
from orchestration.cli.opt_out_cmds import (
    cmd_lineage,
    cmd_opt_out_add,
    cmd_opt_out_list,
    cmd_review,
    opt_out_effect,
    validate_opt_out,
)
from orchestration.cli.pipeline import (
    PipelineFailed,
    UsageError,
    checks_passed,
    dagster_home_for,
    plan_runs,
    print_summary,
    run_pipeline,
)
from orchestration.cli.run_cmds import cmd_demo, cmd_run, cmd_ui

__all__ = ["ConfigError", "PipelineFailed", "UsageError", "build_parser", "checks_passed", "dagster_home_for",
           "load_config", "main", "ocr_inputs", "opt_out_effect", "plan_runs", "print_summary", "run_pipeline",
           "validate_opt_out"]

EXIT_CODES = """exit codes:
  0  success
  1  a run, a step or an error-severity check failed (curate run/demo print the summary of every run first);
     curate inspect / ocr: an input could not be read or decoded (its JSON line says why)
  2  usage or configuration error (a misspelled asset or field, a value out of range, a missing drop, a
     --storage that is a file): one line on stderr naming it, nothing ran
"""


def _quiet_env() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atelier")
    except PackageNotFoundError:  # a checkout that is not installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description="Atelier: curate image data for a DiT.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="materialize assets through Dagster")
    run.add_argument("--source", action="append", help="a source drop (folder, .tar, .parquet); repeatable")
    run.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"), help="storage root (dir/URI)")
    run.add_argument("--config", help="YAML run configuration (see examples/demo.yaml)")
    run.add_argument("--select", help="Dagster asset selection, e.g. '*deduplicated_images' (default: all)")
    run.add_argument("--wait", action="store_true", help="wait for another run on this storage instead of exit 2")
    run.add_argument("--ray-listen-all", action="store_true",
                     help="let the embedded Ray listen on this machine's network address (default: 127.0.0.1 only)")
    run.add_argument("--dry-run", action="store_true",
                     help="per asset and partition: what would be computed, reused or retired, and why; runs nothing")
    run.add_argument("-v", "--verbose", action="store_true", help="stream Dagster's and Ray's log as well")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="run every asset on the bundled sample corpus and print a summary")
    demo.add_argument("--storage", default="data/demo")
    demo.add_argument("--wait", action="store_true", help="wait for another run on this storage instead of exit 2")
    demo.add_argument("-v", "--verbose", action="store_true", help="stream Dagster's and Ray's log as well")
    demo.set_defaults(func=cmd_demo)

    inspect = sub.add_parser("inspect", help="one JSON line per image: what ingest sees")
    inspect.add_argument("paths", nargs="+")
    inspect.add_argument("--min-side", type=int, default=1, help="report too_small below this side (default 1)")
    inspect.add_argument("--no-features", action="store_true", help="skip hashes, embedding and NSFW score")
    inspect.set_defaults(func=cmd_inspect)

    ocr = sub.add_parser("ocr", help="one JSON line per image: its text and lines (text, score, box, language)")
    ocr.add_argument("paths", nargs="+", metavar="PATH", help="image files or directories (searched recursively)")
    ocr.add_argument("--min-score", type=float, default=0.6, help="drop lines below this confidence (default 0.6)")
    ocr.add_argument("--backend", choices=["rapidocr", "paddleocr"], default="rapidocr")
    ocr.add_argument("--second-pass", action="store_true", help="also read each line from a wider crop")
    ocr.add_argument("--det-model-dir", help="PaddleOCR detection model directory (paddleocr backend)")
    ocr.add_argument("--rec-model-dir", help="PaddleOCR recognition model directory (paddleocr backend)")
    ocr.set_defaults(func=cmd_ocr)

    opt_out = sub.add_parser("opt-out", help="the opt-out list (<storage>/_opt_out.csv): add or list requests")
    opt_sub = opt_out.add_subparsers(dest="opt_out_command", required=True)
    add = opt_sub.add_parser("add", help="record a request; the next `curate run` removes what it covers")
    add.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"))
    what = add.add_mutually_exclusive_group(required=True)
    what.add_argument("--sample-id", help="a sample id (hex SHA-256 of the image bytes)")
    what.add_argument("--url", help="a source URL, matched exactly (source_uri or a URL in the metadata)")
    what.add_argument("--domain", help="a host and all its subdomains, e.g. example.com")
    what.add_argument("--artist", help="an artist/creator/author name in the metadata (case-insensitive)")
    add.add_argument("--reason", default="", help="why (ticket, request id); copied into the decisions")
    add.add_argument("--added-by", help="who records it (default: the current user)")
    add.add_argument("--no-preview", action="store_true", help="skip listing the samples it covers now")
    add.set_defaults(func=cmd_opt_out_add)
    listing = opt_sub.add_parser("list", help="every request, and how many samples each has removed so far")
    listing.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"))
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(func=cmd_opt_out_list)

    lineage = sub.add_parser("lineage", help="everything known about one sample")
    lineage.add_argument("sample", metavar="SAMPLE_ID_OR_PATH")
    lineage.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"))
    lineage.add_argument("--json", action="store_true")
    lineage.set_defaults(func=cmd_lineage)

    rev = sub.add_parser("review", help="review the midtraining candidates: list, accept, reject, import a CSV")
    rev_sub = rev.add_subparsers(dest="review_command", required=True)
    rev_list = rev_sub.add_parser("list", help="candidates and reviewed samples with their status")
    rev_list.add_argument("--status", choices=["pending", "accepted", "rejected", "all"], default="all")
    rev_list.add_argument("--json", action="store_true", help="one JSON object per line")
    for verb in ("accept", "reject"):
        rev_verb = rev_sub.add_parser(verb, help=f"{verb} samples (full ids or unique prefixes)")
        rev_verb.add_argument("ids", nargs="+", metavar="ID")
        rev_verb.add_argument("--note", help="a note stored with each verdict")
    rev_import = rev_sub.add_parser("import", help="verdicts from a CSV: sample_id,verdict[,note][,reviewer]")
    rev_import.add_argument("csv", metavar="VERDICTS_CSV")
    for rev_cmd in rev_sub.choices.values():
        rev_cmd.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"))
        if rev_cmd is not rev_list:
            rev_cmd.add_argument("--reviewer", help="who decides (default: $USER); a CSV's reviewer column wins")
        rev_cmd.set_defaults(func=cmd_review)

    from orchestration.attribute import add_parser as add_attribute

    add_attribute(sub)

    ui = sub.add_parser("ui", help="the Dagster UI over a storage root")
    ui.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"))
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--host", default="127.0.0.1",
                    help="address the UI listens on (default: this machine only; 0.0.0.0 opens it to the network)")
    ui.set_defaults(func=cmd_ui)
    return parser



def main(argv: list[str] | None = None) -> int:
    """The `curate` entry point; returns the exit code (see EXIT_CODES)."""
    _quiet_env()
    args = build_parser().parse_args(argv)
    from orchestration.run_lock import StorageBusy

    try:
        return int(args.func(args) or 0)
    except StorageBusy as exc:
        print(f"curate {args.command}: {exc}", file=sys.stderr)
        return 2
    except UsageError as exc:  # ConfigError included
        print(f"curate {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"curate {args.command}: interrupted", file=sys.stderr)
        return 130
