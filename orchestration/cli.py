"""The `curate` command: run, demo, inspect, ocr, opt-out, lineage, ui."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_CORPUS = REPO_ROOT / "examples" / "corpus"
EXAMPLE_CONFIG = REPO_ROOT / "examples" / "demo.yaml"


def _quiet_env() -> None:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")


def dagster_home_for(storage: str) -> str | None:
    """DAGSTER_HOME if set; else `<storage>/.dagster` for local storage, so `curate ui` shows `curate run`'s runs."""
    if os.environ.get("DAGSTER_HOME"):
        return os.environ["DAGSTER_HOME"]
    if "://" in storage:
        return None
    home = Path(storage).resolve() / ".dagster"
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n")
    return str(home)


def _instance(storage: str):
    import dagster as dg

    home = dagster_home_for(storage)
    if home is None:
        return dg.DagsterInstance.ephemeral()
    os.environ["DAGSTER_HOME"] = home
    return dg.DagsterInstance.get()


def load_config(path: str | None) -> dict[str, Any]:
    """A YAML (or JSON) run configuration: `assets: {asset_name: {field: value}}` and `ray: {num_cpus: N}`."""
    if not path:
        return {}
    import yaml

    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise SystemExit(f"{path}: expected a mapping at the top level")
    unknown = set(data) - {"assets", "ray"}
    if unknown:
        raise SystemExit(f"{path}: unknown section(s) {sorted(unknown)}; expected 'assets' and 'ray'")
    return data


def run_pipeline(sources: list[str], storage: str, config: dict[str, Any] | None = None,
                 select: str | None = None) -> list[dict[str, Any]]:
    """Register the drops, then materialize the selection through Dagster: one run per drop, then the global assets.

    Returns:
        One summary per materialized asset partition (asset, partition, metadata, check results).
    """
    import dagster as dg

    from assets import ALL_ASSETS
    from assets.source_images import source_drops
    from curation.sources import canonical_uri, drop_key
    from orchestration.definitions import build_resources, defs
    from orchestration.ray_adapter import init_ray
    from orchestration.storage import TableStore

    config = config or {}
    store = TableStore(storage)
    instance = _instance(storage)
    for source in sources:
        if "://" not in source and not Path(source).exists():
            raise SystemExit(f"source drop not found: {source}")
        key = drop_key(source)
        store.register_source(key, canonical_uri(source))
        if not instance.has_dynamic_partition(source_drops.name, key):
            instance.add_dynamic_partitions(source_drops.name, [key])
    keys = [drop_key(s) for s in sources] if sources else list(store.registered_sources())
    for key in keys:
        if not instance.has_dynamic_partition(source_drops.name, key):
            instance.add_dynamic_partitions(source_drops.name, [key])
    if not keys:
        raise SystemExit(f"no source drops: pass --source PATH (none are registered under {storage})")

    graph = defs.resolve_asset_graph()
    try:
        selected = (dg.AssetSelection.from_string(select) if select else dg.AssetSelection.all()).resolve(graph)
    except Exception as exc:  # Dagster raises several types for bad selections; all mean the same to a user
        raise SystemExit(f"--select {select!r} matches no asset: {exc}") from exc
    if not selected:
        raise SystemExit(f"--select {select!r} matches no asset")
    ray_cfg = config.get("ray", {})
    resources = build_resources(storage_root=storage, ray_num_cpus=ray_cfg.get("num_cpus"))
    def run_config_for(asset_keys) -> dict[str, Any]:
        ops = {name: {"config": cfg} for name, cfg in (config.get("assets") or {}).items()
               if dg.AssetKey(name) in asset_keys}
        return {"ops": ops,
                "loggers": {"console": {"config": {"log_level": os.environ.get("ATELIER_LOG_LEVEL", "INFO")}}}}

    init_ray(ray_cfg.get("num_cpus"))  # one Ray for every run this command makes
    summaries: list[dict[str, Any]] = []
    runs = plan_runs(graph, selected, keys)
    for partition, asset_keys in runs:
        result = dg.materialize(ALL_ASSETS, selection=asset_keys, partition_key=partition, instance=instance,
                                resources=resources, run_config=run_config_for(asset_keys), raise_on_error=False,
                                tags={"atelier/cli": "curate run"})
        if not result.success:
            failure = next((e for e in result.all_events if e.is_failure), None)
            message = failure.message if failure else "unknown failure"
            raise SystemExit(f"run {result.run_id} failed for partition {partition or '(global)'}: {message}")
        for event in result.get_asset_materialization_events():
            mat = event.event_specific_data.materialization
            summaries.append({
                "asset": mat.asset_key.to_user_string(),
                "partition": mat.partition,
                "run_id": result.run_id,
                "metadata": {k: _plain(v) for k, v in mat.metadata.items()},
            })
        for evaluation in result.get_asset_check_evaluations():
            summaries.append({"check": evaluation.check_name, "asset": evaluation.asset_key.to_user_string(),
                              "partition": partition, "passed": evaluation.passed,
                              "severity": getattr(evaluation.severity, "value", "ERROR")})
    return summaries


def plan_runs(graph, selected, drop_keys: list[str]) -> list[tuple[str | None, list]]:
    """Dagster runs in dependency order: (partition key or None, asset keys).

    A run materializes assets of one partitions definition; an asset moves to a later phase than a parent with another
    partitioning (the probe before the drops, dedup after every drop, the shards after the captions). Drop-partitioned
    phases run once per drop, curriculum-stage phases once per stage in curriculum order.
    """
    import dagster as dg

    phase: dict = {}
    for key in graph.toposorted_asset_keys:
        node = graph.get(key)
        # an unpartitioned root (the probe) runs before everything, so its children need no phase of their own
        root = -1 if node.partitions_def is None else 0
        phase[key] = max((phase[p] + (graph.get(p).partitions_def != node.partitions_def) for p in node.parent_keys),
                         default=root)
    groups: dict[tuple, list] = {}
    for key in graph.toposorted_asset_keys:
        if key in selected:
            pdef = graph.get(key).partitions_def
            groups.setdefault((phase[key], repr(pdef) if pdef else ""), []).append(key)
    runs: list[tuple[str | None, list]] = []
    for (_, _), keys in sorted(groups.items(), key=lambda item: item[0]):
        pdef = graph.get(keys[0]).partitions_def
        if pdef is None:
            runs.append((None, keys))
        elif isinstance(pdef, dg.DynamicPartitionsDefinition):
            runs += [(k, keys) for k in drop_keys]
        else:
            runs += [(k, keys) for k in pdef.get_partition_keys()]
    return runs


def _plain(value: Any) -> Any:
    return getattr(value, "value", getattr(value, "path", getattr(value, "text", value)))


def checks_passed(summaries: list[dict[str, Any]]) -> bool:
    """No failed check of ERROR severity (a failed WARN check, such as a plateauing loss, is reported, not fatal)."""
    return all(s.get("passed", True) or s.get("severity") == "WARN" for s in summaries)


def print_summary(summaries: list[dict[str, Any]], out=None) -> None:
    """A table of what each asset partition kept and dropped, and whether its checks passed."""
    out = out or sys.stdout
    checks = {(s["asset"], s["partition"], s["check"]): s["passed"] for s in summaries
              if "check" in s and s.get("severity") != "WARN"}
    warns = {(s["asset"], s["partition"], s["check"]): s["passed"] for s in summaries
             if "check" in s and s.get("severity") == "WARN"}
    print(f"{'asset':<22} {'partition':<28} {'in':>6} {'kept':>6} {'dropped':>8}  checks  drop reasons", file=out)
    for s in summaries:
        if "check" in s:
            continue
        meta = s["metadata"]
        mine = [ok for (a, p, _), ok in checks.items() if a == s["asset"] and p == s["partition"]]
        warned = [ok for (a, p, _), ok in warns.items() if a == s["asset"] and p == s["partition"]]
        status = "ok" if mine and all(mine) else ("FAIL" if mine else "-")
        if status != "FAIL" and not all(warned):
            status = "warn"
        reasons = ", ".join(f"{k[len('dropped_'):]}={v}" for k, v in meta.items() if k.startswith("dropped_"))
        if "curated_total" in meta:  # incremental assets: what this run added and what the whole set holds now
            reasons = f"[{meta['curated_total']} curated in all] {reasons}".strip()
        if "held_out_auc" in meta:
            reasons = f"probe {meta.get('version')}: {meta['n_ai']} AI / {meta['n_real']} real, held-out AUC " \
                      f"{meta['held_out_auc']:.2f}"
        if "final_loss" in meta:
            reasons = f"DiT {meta['model_size']} ({meta['params']:,} params), {meta['steps']} steps, loss " \
                      f"{meta['first_loss']:.3f} -> {meta['final_loss']:.3f}, {meta['samples_per_second']} samples/s"
        partition = str(s["partition"] or "-")
        print(f"{s['asset']:<22} {partition:<28} {meta.get('total', ''):>6} {meta.get('kept', ''):>6} "
              f"{meta.get('dropped', ''):>8}  {status:<6}  {reasons}", file=out)


# ------------------------------------------------------------------------------------------------------ commands


def cmd_run(args: argparse.Namespace) -> int:
    summaries = run_pipeline(args.source or [], args.storage, load_config(args.config), args.select)
    print_summary(summaries)
    return 0 if checks_passed(summaries) else 1


def demo_sources() -> list[str]:
    """The source drops of the bundled sample corpus (each folder, tar and manifest under examples/corpus)."""
    if not EXAMPLE_CORPUS.is_dir():
        raise SystemExit(f"the sample corpus is missing: {EXAMPLE_CORPUS}")
    return [str(p) for p in sorted(EXAMPLE_CORPUS.iterdir()) if not p.name.startswith((".", "ATTRIBUTION"))]


def cmd_demo(args: argparse.Namespace) -> int:
    sources = demo_sources()
    config = load_config(str(EXAMPLE_CONFIG) if EXAMPLE_CONFIG.exists() else None)
    print(f"curate demo: {len(sources)} source drops from {EXAMPLE_CORPUS} -> {args.storage}")
    summaries = run_pipeline(sources, args.storage, config)
    print_summary(summaries)
    def dropped(asset: str) -> int:
        return sum(int(s["metadata"].get("dropped") or 0) for s in summaries
                   if "metadata" in s and s["asset"] == asset)

    total = sum(s["metadata"].get("total", 0) for s in summaries if "metadata" in s and s["asset"] == "source_images")
    curated = next((s["metadata"].get("curated_total") for s in summaries
                    if "metadata" in s and s["asset"] == "deduplicated_images"), None)
    print(f"\n{total} inputs: {dropped('source_images')} refused at ingest, {dropped('exclusion_signals')} "
          f"excluded by the filters, {dropped('deduplicated_images')} removed as duplicates (this run), "
          f"{curated if curated is not None else '?'} curated in all; every removal is in the decisions ledger.")
    shards = {s["partition"]: s["metadata"].get("dagster/row_count") for s in summaries
              if "metadata" in s and s["asset"] == "training_shards"}
    trained = {s["partition"]: s["metadata"] for s in summaries if "metadata" in s and s["asset"] == "dit_checkpoint"}
    if shards:
        losses = ", ".join(f"stage {k} loss {m['first_loss']:.3f} -> {m['final_loss']:.3f}"
                           for k, m in trained.items())
        print("Training shards: " + ", ".join(f"stage {k}: {v} images" for k, v in shards.items())
              + f"; DiT: {losses or 'not trained'} (checkpoints under {args.storage}/dit_checkpoint/).")
    print(f"Explore: curate lineage <sample_id or path> --storage {args.storage}   |   "
          f"curate ui --storage {args.storage}")
    return 0 if checks_passed(summaries) else 1


def cmd_inspect(args: argparse.Namespace) -> int:
    from curation.image_io import ImageRejected, ProbeLimits, probe_image
    from curation.ingest import sha256_hex
    from curation.sources import RawItem, ReadLimits, plan_units, read_unit

    limits = ProbeLimits(min_side=args.min_side)
    extractor = None
    if not args.no_features:
        from curation.features import FeatureConfig, FeatureExtractor

        extractor = FeatureExtractor(FeatureConfig())
    for path in args.paths:
        items: list[RawItem]
        try:
            items = [item for unit in plan_units(path, ReadLimits()) for item in read_unit(unit)]
        except FileNotFoundError as exc:
            items = [RawItem(path, path, reason="missing_file", details={"error": str(exc)})]
        for item in items:
            record: dict[str, Any] = {"path": item.source_uri, "sample_id": None, "format": None, "width": None,
                                      "height": None, "mode": None, "notes": item.notes, "error": item.reason}
            if item.data is not None:
                record["sample_id"] = sha256_hex(item.data)
            if item.reason is None and item.data is not None:
                try:
                    facts = probe_image(item.data, limits, with_metadata=True)
                    record.update(format=facts.format, width=facts.width, height=facts.height, mode=facts.mode,
                                  n_frames=facts.n_frames, notes=facts.notes + item.notes)
                    if extractor is not None:
                        record.update(_feature_signals(extractor, item.data))
                        record.update(_exclusion_signals(item, facts, record.get("nsfw_score")))
                except ImageRejected as rej:
                    record["error"] = rej.reason
                    record["error_detail"] = rej.details.get("message")
            elif item.details:
                record["error_detail"] = item.details
            print(json.dumps(record, default=str))
    return 0


def _feature_signals(extractor, data: bytes) -> dict[str, Any]:
    import pyarrow as pa

    row = pa.table({"sample_id": ["-"], "source": ["-"], "source_uri": ["-"], "width": pa.array([0], pa.int32()),
                    "height": pa.array([0], pa.int32()), "byte_size": [len(data)], "format": ["-"], "image": [data]})
    features = extractor.process_batch(row).to_pylist()[0]
    return {"phash": f"{features['phash']:016x}", "dhash": f"{features['dhash']:016x}",
            "phash_orientations": [f"{h:016x}" for h in features["phash_orientations"]],
            "embedding_dim": len(features["embedding"]), "embedding_model": features["embedding_model"],
            "nsfw_score": round(float(features["nsfw_score"]), 5)}


def _exclusion_signals(item, facts, nsfw_score: float | None) -> dict[str, Any]:
    from curation.exclusion import ExclusionConfig, assess

    row, decision = assess(facts.format, item.source_uri, item.data, facts.format,
                           {"embedded": facts.metadata or {}, "sidecar": item.sidecar}, nsfw_score, None,
                           ExclusionConfig())
    keep = ("ai_generated", "ai_signals", "c2pa_present", "c2pa_validation", "watermark_bit_accuracy", "artifacts",
            "eligible_256", "eligible_512", "eligible_1024", "excluded", "exclusion_reasons")
    return {k: row[k] for k in keep}


def ocr_inputs(paths: list[str]) -> list[str]:
    """The files `curate ocr` reads: files as given, directories expanded to the image files inside (recursive,
    sorted; hidden entries skipped); a missing path is kept so that it gets its own error line."""
    from curation.image_io import IMAGE_EXTENSIONS

    out: list[str] = []
    for path in paths:
        if not os.path.isdir(path):
            out.append(path)
            continue
        found = []
        for folder, dirs, files in os.walk(path):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            found += [os.path.join(folder, f) for f in files
                      if not f.startswith(".") and os.path.splitext(f)[1].lower() in IMAGE_EXTENSIONS]
        out += sorted(found)
    return out


def cmd_ocr(args: argparse.Namespace) -> int:
    from captioning.ocr import OcrConfig, load_engine
    from curation.image_io import ImageRejected, load_rgb

    config = OcrConfig(backend=args.backend, min_score=args.min_score, second_pass=args.second_pass,
                       det_model_dir=args.det_model_dir, rec_model_dir=args.rec_model_dir)
    try:
        engine = load_engine(config)
        engine.setup()
    except Exception as exc:  # a missing backend or model directory: one clear message, no traceback
        print(f"curate ocr: cannot start the {args.backend} backend: {exc}", file=sys.stderr)
        return 2
    failed = 0
    for path in ocr_inputs(args.paths):
        record: dict[str, Any] = {"path": path}
        try:
            with open(path, "rb") as f:
                image = load_rgb(f.read())
            record.update(engine.read(image).to_json())
        except ImageRejected as rej:
            record.update(text="", lines=[], error=rej.reason, error_detail=rej.details.get("message"))
        except OSError as exc:
            record.update(text="", lines=[], error="unreadable", error_detail=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # the engine broke on this image: report it and go on with the next one
            record.update(text="", lines=[], error="ocr_failed", error_detail=f"{type(exc).__name__}: {exc}")
        failed += "error" in record
        print(json.dumps(record, ensure_ascii=False), flush=True)
    if failed:
        print(f"curate ocr: {failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_URL_VALUE = re.compile(r"^[a-z][a-z0-9+.-]*://\S+$", re.I)
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")


def validate_opt_out(kind: str, value: str) -> str:
    """The normalised value of a new opt-out request, or ValueError saying what is wrong with it."""
    from curation.opt_out import normalise

    norm = normalise(kind, value)
    if not norm:
        raise ValueError(f"empty {kind}")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in norm):
        raise ValueError(f"{kind} {value!r} contains control characters")
    if kind == "sample_id" and not _HEX64.match(norm):
        raise ValueError(f"sample id {value!r} is not a hex SHA-256 (64 hex digits)")
    if kind == "url" and not _URL_VALUE.match(norm):
        raise ValueError(f"url {value!r} is not an absolute URL (scheme://...); use --domain for a whole site")
    if kind == "domain":
        try:
            ascii_host = norm.encode("idna").decode("ascii")
        except UnicodeError:
            ascii_host = ""
        labels = ascii_host.split(".")
        if len(ascii_host) > 253 or len(labels) < 2 or not all(_HOST_LABEL.match(label) for label in labels):
            raise ValueError(f"domain {value!r} is not a host name like example.com (got {norm!r})")
    if kind == "artist" and len(norm) > 300:
        raise ValueError(f"artist name is {len(norm)} characters long; at most 300")
    return norm


def _opt_out_candidates(store, request) -> Any:
    """`source_images` rows (sample_id, source, source_uri, metadata) that might match `request`: a pushed-down
    filter on the sample id, or a case-insensitive substring of the URL, domain or artist's first word."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    from curation.schema import SOURCE_IMAGES_SCHEMA

    value = request.value
    if request.kind == "sample_id":
        condition = pads.field("sample_id") == value
    else:
        needle = value.split()[0] if request.kind == "artist" else value
        if '"' in needle or "\\" in needle:  # JSON escapes these inside the metadata column: no pre-filter
            condition = None
        else:
            condition = (pc.match_substring(pads.field("source_uri"), needle, ignore_case=True)
                         | pc.match_substring(pads.field("metadata"), needle, ignore_case=True))
    columns = ["sample_id", "source", "source_uri", "metadata"]
    return store.read_table(store.asset_dir("source_images"), columns=columns, filter=condition,
                            schema=SOURCE_IMAGES_SCHEMA)


def opt_out_effect(store, request) -> dict[str, Any]:
    """What honouring `request` changes at the next run: the ingested samples it covers, which of them are curated
    now (kept by `rebalanced_images`) and in which curriculum stages' shards they are."""
    import pyarrow.dataset as pads

    from curation.opt_out import OptOutList

    single = OptOutList([request])
    candidates = _opt_out_candidates(store, request)
    covered: dict[str, list[str]] = {}
    for row in candidates.to_pylist():
        if single.match(row["sample_id"], row["source_uri"], row["metadata"]):
            covered.setdefault(row["sample_id"], []).append(row["source_uri"])
    ids = sorted(covered)
    curated: set[str] = set()
    shards: dict[str, list[str]] = {}
    if ids:
        within = pads.field("sample_id").isin(ids)
        rebalanced = store.read_table(store.dir("rebalanced_images"), columns=["sample_id", "kept"], filter=within)
        curated = {r["sample_id"] for r in rebalanced.to_pylist() if r["kept"]}
        for stage in store.list_partitions("training_shards"):
            rows = store.read_table(store.dir("training_shards", stage), columns=["sample_id"], filter=within)
            for sid in set(rows.column("sample_id").to_pylist()) if rows.num_rows else ():
                shards.setdefault(sid, []).append(stage)
    samples = [{"sample_id": sid, "source_uris": covered[sid], "curated": sid in curated,
                "shard_stages": sorted(shards.get(sid, []), key=lambda s: (len(s), s))} for sid in ids]
    return {"samples": samples, "curated": len(curated), "in_shards": len(shards)}


def _describe_opt_out(request) -> str:
    extra = ", ".join(p for p in (f"reason: {request.reason}" if request.reason else "",
                                  f"by {request.added_by}" if request.added_by else "",
                                  f"at {request.added_at}" if request.added_at else "") if p)
    return f"{request.kind} {request.value!r}" + (f" ({extra})" if extra else "")


def cmd_opt_out_add(args: argparse.Namespace) -> int:
    import time

    from curation.opt_out import make, normalise
    from orchestration.opt_outs import add_opt_outs, list_path, load_opt_outs
    from orchestration.storage import TableStore

    kind, raw = next((k, v) for k, v in (("sample_id", args.sample_id), ("url", args.url), ("domain", args.domain),
                                         ("artist", args.artist)) if v is not None)
    try:
        value = validate_opt_out(kind, raw)
    except ValueError as exc:
        print(f"curate opt-out add: {exc}", file=sys.stderr)
        return 2
    reason = " ".join((args.reason or "").split())
    added_by = args.added_by if args.added_by is not None else _user()
    store = TableStore(args.storage)
    request = make(kind, value, reason=reason, added_by=added_by)
    for attempt in range(50):  # another `add` holds the list for a moment at most
        try:
            with store.lock("opt_out", owner=f"curate opt-out add ({added_by})"):
                existing = next((e for e in load_opt_outs(store).entries
                                 if e.kind == kind and normalise(kind, e.value) == value), None)
                if existing is None:
                    add_opt_outs(store, [request])
            break
        except (ValueError, FileNotFoundError) as exc:  # a malformed list is reported, never rewritten
            print(f"curate opt-out add: {exc}; nothing was added", file=sys.stderr)
            return 2
        except RuntimeError:
            if attempt == 49:
                raise
            time.sleep(0.2)
    where = store.uri(list_path(store))
    if existing is not None:
        print(f"already listed: {_describe_opt_out(existing)}; {where} is unchanged")
        return 0
    print(f"added to {where}: {_describe_opt_out(request)}")
    effect = None if args.no_preview else opt_out_effect(store, request)
    print(_opt_out_plan(args.storage, effect))
    return 0


def _user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _opt_out_plan(storage: str, effect: dict[str, Any] | None, limit: int = 20) -> str:
    lines = []
    if effect is not None:
        samples = effect["samples"]
        lines.append(f"it covers {len(samples)} ingested sample(s) now: {effect['curated']} curated, "
                     f"{effect['in_shards']} in training shards")
        for s in samples[:limit]:
            where = "curated" if s["curated"] else "not curated"
            if s["shard_stages"]:
                where += ", in shards of stage " + ", ".join(s["shard_stages"])
            lines.append(f"  {s['sample_id']}  {s['source_uris'][0]}  ({where})")
        if len(samples) > limit:
            lines.append(f"  ... and {len(samples) - limit} more")
    lines.append(f"on the next `curate run --storage {storage}` (nothing changes before it):")
    lines.append("  - source_images refuses new inputs it covers (decision opt_out / opted_out)")
    lines.append("  - rebalanced_images is recomputed (the list changed) and drops the curated samples it covers, "
                 "each with an opt_out / opted_out decision naming this request")
    lines.append("  - training_shards re-applies the list in every curriculum stage: no covered sample stays in a "
                 "shard")
    return "\n".join(lines)


def cmd_opt_out_list(args: argparse.Namespace) -> int:
    import pyarrow.dataset as pads

    from orchestration.opt_outs import load_opt_outs
    from orchestration.storage import TableStore

    store = TableStore(args.storage)
    entries = load_opt_outs(store).entries
    # how many samples each request has removed so far (ledger rows of stage opt_out, read with a filter)
    ledger = store.read_decisions(filter=pads.field("stage") == "opt_out")
    honoured: dict[tuple[str, str], set[str]] = {}
    for d in ledger.select(["sample_id", "details"]).to_pylist():
        details = json.loads(d["details"] or "{}")
        honoured.setdefault((details.get("kind"), details.get("value")), set()).add(d["sample_id"])
    rows = [{"kind": e.kind, "value": e.value, "reason": e.reason, "added_by": e.added_by, "added_at": e.added_at,
             "samples_removed": len(honoured.get((e.kind, e.value), ()))} for e in entries]
    if args.json:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
        return 0
    if not rows:
        print(f"no opt-out requests for {args.storage}")
        return 0
    for row in rows:
        extra = "  ".join(p for p in (row["reason"] and f"reason: {row['reason']}",
                                      row["added_by"] and f"by {row['added_by']}", row["added_at"]) if p)
        print(f"{row['kind']:<9}  {row['value']}  [{row['samples_removed']} sample(s) removed so far]"
              + (f"  {extra}" if extra else ""))
    print(f"{len(rows)} request(s)")
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    from orchestration.lineage import find_lineage, format_lineage

    report = find_lineage(args.storage, args.sample)
    if not report["records"] and not report["decisions"]:
        print(f"nothing about {args.sample!r} under {args.storage}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2, default=str) if args.json else format_lineage(report))
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from orchestration import review
    from orchestration.storage import TableStore

    store = TableStore(args.storage)
    try:
        if args.review_command == "list":
            rows = review.review_rows(store, args.status)
            if args.json:
                for row in rows:
                    print(json.dumps(row, ensure_ascii=False, default=str))
            else:
                print(review.format_rows(rows))
            return 0
        if args.review_command == "import":
            verdicts = review.import_csv(store, args.csv, args.reviewer)
        else:
            verdicts = review.record(store, args.ids, args.review_command, args.reviewer, args.note)
    except review.ReviewError as exc:
        print(f"curate review {args.review_command}: {exc}", file=sys.stderr)
        return 1
    kinds = {k: sum(v.verdict == k for v in verdicts) for k in ("accept", "reject")}
    print(f"recorded {len(verdicts)} verdict(s) ({kinds['accept']} accept, {kinds['reject']} reject) by "
          f"{', '.join(sorted({v.reviewer for v in verdicts}))} in {store.uri(store.dir(review.REVIEW_LOG))}")
    for v in verdicts:
        print(f"  {v.verdict:<6}  {v.sample_id}  {v.time.isoformat()}" + (f"  ({v.note})" if v.note else ""))
    print(f"they apply at the next materialization: curate run --select midtraining_candidates --storage "
          f"{args.storage}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    storage = str(Path(args.storage).resolve()) if "://" not in args.storage else args.storage
    env = dict(os.environ, ATELIER_STORAGE=storage)
    home = dagster_home_for(args.storage)
    if home:
        env["DAGSTER_HOME"] = home
    exe = Path(sys.executable).with_name("dagster")
    cmd = [str(exe) if exe.exists() else "dagster", "dev", "-m", "orchestration.definitions",
           "-h", args.host, "-p", str(args.port)]
    # `dagster dev` inherits an ignored SIGINT from a backgrounded shell; restore it so SIGINT/SIGTERM stop the UI.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.chdir(REPO_ROOT)
    os.execvpe(cmd[0], cmd, env)
    return 0  # not reached


def _add_attribute(sub) -> None:
    from orchestration.attribute import add_parser

    add_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="curate", description="Atelier: curate image data for a DiT.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="materialize assets through Dagster")
    run.add_argument("--source", action="append", help="a source drop (folder, .tar, .parquet); repeatable")
    run.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"), help="storage root (dir/URI)")
    run.add_argument("--config", help="YAML run configuration (see examples/demo.yaml)")
    run.add_argument("--select", help="Dagster asset selection, e.g. '*deduplicated_images' (default: all)")
    run.set_defaults(func=cmd_run)

    demo = sub.add_parser("demo", help="run every asset on the bundled sample corpus and print a summary")
    demo.add_argument("--storage", default="data/demo")
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

    _add_attribute(sub)

    ui = sub.add_parser("ui", help="the Dagster UI over a storage root")
    ui.add_argument("--storage", default=os.environ.get("ATELIER_STORAGE", "data"))
    ui.add_argument("--port", type=int, default=3000)
    ui.add_argument("--host", default="127.0.0.1")
    ui.set_defaults(func=cmd_ui)
    return parser


def main(argv: list[str] | None = None) -> int:
    _quiet_env()
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
