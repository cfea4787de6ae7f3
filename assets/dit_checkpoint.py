"""`dit_checkpoint`: one curriculum stage of DiT training on that stage's shards, through Ray Train.

Each stage starts from the previous stage's checkpoint (256 -> 512 -> 1024) and writes
`<storage>/dit_checkpoint/<stage>/` with `checkpoint.pt` (model, EMA, optimizer, step, both configs), `metrics.jsonl`,
`samples.png` and `_SUCCESS.json` (the shard files it was trained on, for lineage). A killed run resumes from the
last checkpoint; a rerun on unchanged inputs trains nothing; changed shards, configs or a retrained previous stage
start the stage over.

The storage root is a local directory or any URI the TableStore opens (`s3://...` in production). With a URI, the
Ray Train workers read shards and the previous checkpoint from it and rank 0 uploads the stage's files after every
checkpoint (`orchestration.train_sync`), so the Dagster run pod and the training nodes share no volume; the paths in
`_SUCCESS.json` and the metadata are then URIs. This asset reads everything through the TableStore.
"""

import hashlib
import json
import math
import os
import posixpath
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import dagster as dg
from dagster_ray import RayResource
from pydantic import Field

from assets.training_shards import ASSET as SHARDS
from assets.training_shards import STAGE_KEYS, curriculum_stages, training_shards
from curation.plots import loss_curve_plot, png_markdown
from orchestration.resources import StorageResource
from orchestration.storage import SUCCESS_MARKER, TableStore

ASSET = "dit_checkpoint"
DIT_CODE_VERSION = "dit-2"
INPUTS_MARKER = "_inputs.json"
STATE_FILES = ("checkpoint.pt", "checkpoint.json", "metrics.jsonl", "samples.png")
# Not part of what the weights depend on: the step count, cadences, previews, the loader and cache settings.
RESUMABLE_FIELDS = ("steps", "log_every", "checkpoint_every", "preview_prompts", "preview_steps", "preview_cfg_scale",
                    "loader_workers", "loader_prefetch", "text_cache_dir")


class DitCheckpointConfig(dg.Config):
    """Which model and recipe each curriculum stage trains; unset overrides keep the recipe's values."""

    model_size: str = Field(default="debug", description="A size of training.config.SIZES: debug, S, B, L, XL.")
    recipes: dict[str, str] = Field(default={}, description="Recipe (training.config.recipes()) per stage key; "
                                                            "default: the key itself (the production 256/512/1024).")
    steps: int | None = Field(default=None, description="Optimizer steps of every stage.")
    batch_size: int | None = Field(default=None, description="Images per step per worker.")
    lr: float | None = Field(default=None, description="Peak learning rate.")
    log_every: int | None = Field(default=None, description="Steps per metrics.jsonl line.")
    checkpoint_every: int | None = Field(default=None, description="Steps between checkpoints (a killed run "
                                                                   "resumes from the last one).")
    num_workers: int | None = Field(default=None, description="Ray Train workers (one process each).")
    strategy: str | None = Field(default=None, description="Data parallelism with several workers: ddp or fsdp.")
    use_gpu: bool | None = Field(default=None, description="One GPU per Ray Train worker.")
    text_encoder: str | None = Field(default=None, description="minilm (bundled) or a local model directory.")
    teacher: str | None = Field(default=None, description="iREPA teacher: embedded, none or a local directory.")

    def configs(self, stage: str):
        """The (ModelConfig, TrainConfig) of one stage: the one conversion from Dagster config to the pure configs."""
        from training.config import model_config, recipes

        name = self.recipes.get(stage, stage)
        known = recipes()
        if name not in known:
            raise ValueError(f"stage {stage}: unknown training recipe {name!r}; expected one of {sorted(known)}")
        overrides = {k: v for k, v in {"steps": self.steps, "batch_size": self.batch_size, "lr": self.lr,
                                       "log_every": self.log_every, "checkpoint_every": self.checkpoint_every,
                                       "num_workers": self.num_workers, "use_gpu": self.use_gpu,
                                       "strategy": self.strategy, "text_encoder": self.text_encoder,
                                       "teacher": self.teacher}.items()
                     if v is not None}
        return model_config(self.model_size), replace(known[name], **overrides), name


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def read_metrics(store: TableStore, path: str) -> list[dict]:
    """The metrics.jsonl records at `path` inside the store (an absent file is no records)."""
    data = store.read_bytes(path)
    if data is None:
        return []
    return [json.loads(line) for line in data.decode().splitlines() if line.strip()]


def loss_fell(records: list[dict]) -> tuple[bool, float, float]:
    """(passed, first, last) of the stage's loss.

    With `eval_loss` (the EMA weights on the trainer's fixed batch, fixed noise and times: it moves only with the
    weights): the weights the stage started from against the mean of its last fifth of lines. Without it: the mean
    of the last fifth of the logged training windows against the first window.
    """
    evals = [r["eval_loss"] for r in records if isinstance(r.get("eval_loss"), int | float)]
    start = next((r["eval_loss_initial"] for r in records if isinstance(r.get("eval_loss_initial"), int | float)),
                 evals[0] if evals else None)
    if evals and start is not None and len(evals) + ("eval_loss_initial" in records[0]) >= 2:
        tail = evals[-max(1, len(evals) // 5):]
        last = sum(tail) / len(tail)
        return math.isfinite(start) and math.isfinite(last) and last < start, start, last
    losses = [r["loss"] for r in records if isinstance(r.get("loss"), int | float)]
    if len(losses) < 2 or not all(math.isfinite(x) for x in losses):
        return False, losses[0] if losses else math.nan, losses[-1] if losses else math.nan
    tail = losses[-max(1, len(losses) // 5):]
    last = sum(tail) / len(tail)
    return last < losses[0], losses[0], last


def _delete(store: TableStore, path: str) -> None:
    if store.exists(path):
        store.fs.delete_file(path)


def _checkpoint_summary(store: TableStore, path: str, reused: bool) -> dict:
    """`step`, `model_config_hash` and `source` of the stored checkpoint.

    A reused stage reads `checkpoint.json` (written after the checkpoint by the trainer, uploaded after it) and only
    compares its size with the stored file's: no multi-GB download. A freshly trained stage loads the checkpoint
    itself (weights_only=True) and checks it against its summary's SHA-256.
    """
    from orchestration.train_sync import download
    from training.checkpoint import SUMMARY_NAME, config_hash, file_sha256, load_checkpoint

    summary = store.read_json(posixpath.join(posixpath.dirname(path), SUMMARY_NAME))
    if reused and summary is not None:
        size = store.fs.get_file_info(path).size
        if size != summary["bytes"]:
            return {"step": -1, "model_config_hash": None, "source": f"summary of {summary['bytes']} bytes, "
                                                                      f"stored checkpoint {size} bytes"}
        return {"step": int(summary["step"]), "model_config_hash": summary["model_config_hash"],
                "source": "checkpoint.json"}
    with tempfile.TemporaryDirectory(prefix="atelier-check-") as tmp:
        local = Path(path)
        if "://" in store.root:  # streamed to a local file: a large checkpoint is never held twice in memory
            local = Path(tmp) / "checkpoint.pt"
            download(store, path, local)
        ckpt = load_checkpoint(local)
        if summary is not None and summary["sha256"] != file_sha256(local):
            return {"step": -1, "model_config_hash": None, "source": "checkpoint.pt differs from its summary"}
    return {"step": int(ckpt["step"]), "model_config_hash": config_hash(ckpt["model_config"]),
            "source": "checkpoint.pt"}


CPUS_PER_WORKER = 1.0
"""CPUs each Ray Train worker reserves. The Ray Train (v2) controller reserves none and the Dagster step is no Ray
task, so `num_workers` workers fit a machine of as many cores: the demo's 2 workers on 2 cores."""


def _require_resources(train_cfg, cpus_per_worker: float = CPUS_PER_WORKER) -> None:
    """A worker group the cluster cannot hold would wait forever for its workers: fail now, naming what is missing
    (on the embedded cluster; a cluster joined through RAY_ADDRESS may autoscale)."""
    import ray

    from orchestration.ray_adapter import init_ray

    init_ray()
    if os.environ.get("RAY_ADDRESS"):
        return
    resources = ray.cluster_resources()
    gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 0)
    if train_cfg.use_gpu and gpus < train_cfg.num_workers:
        raise RuntimeError(f"use_gpu with {train_cfg.num_workers} worker(s) needs as many GPUs; this Ray cluster "
                           f"has {gpus:g}. Set dit_checkpoint's use_gpu: false (and num_workers) for a CPU run, "
                           f"or point RAY_ADDRESS at a GPU cluster")
    if train_cfg.num_workers * cpus_per_worker > cpus:
        raise RuntimeError(f"{train_cfg.num_workers} Ray Train worker(s) of {cpus_per_worker:g} CPU need "
                           f"{train_cfg.num_workers * cpus_per_worker:g} CPUs; this Ray cluster has {cpus:g}. Lower "
                           f"dit_checkpoint's num_workers, or point RAY_ADDRESS at a larger cluster")


@dg.asset(
    partitions_def=curriculum_stages,
    deps=[training_shards],
    code_version=DIT_CODE_VERSION,
    kinds={"ray", "pytorch"},
    group_name="training",
    check_specs=[
        dg.AssetCheckSpec("loss_falls", asset=ASSET,
                          description="the last logged losses of the stage are below its first logged loss"),
        dg.AssetCheckSpec("checkpoint_loads", asset=ASSET,
                          description="checkpoint.pt loads with weights_only=True at the configured step"),
        dg.AssetCheckSpec("metrics_complete", asset=ASSET,
                          description="metrics.jsonl has increasing steps up to the last one"),
    ],
)
def dit_checkpoint(context: dg.AssetExecutionContext, config: DitCheckpointConfig, storage: StorageResource,
                   ray_cluster: RayResource) -> dg.MaterializeResult:
    """The DiT trained on this curriculum stage's shards, starting from the previous stage's checkpoint."""
    store = storage.store()
    stage = context.partition_key
    with store.lock(f"{ASSET}-{stage}", owner=context.run.run_id):
        return _train(context, config, store, stage)


def _inputs(store: TableStore, stage: str) -> tuple[list[str], int, str | None, str | None]:
    """(shard files, rows, previous checkpoint or None, previous stage's input id or None); fails naming the gap."""
    shard_dir = store.dir(SHARDS, stage)
    card = store.read_json(f"{shard_dir}/{SUCCESS_MARKER}")
    if card is None:
        raise RuntimeError(f"materialize training_shards partition {stage} before dit_checkpoint {stage}")
    if not card.get("rows"):
        raise RuntimeError(f"training_shards {stage} holds no rows (see its drop reasons): nothing to train on")
    shards = store.list_parts(shard_dir)
    index = STAGE_KEYS.index(stage)
    if index == 0:
        return shards, card["rows"], None, None
    previous = STAGE_KEYS[index - 1]
    done = store.read_json(f"{store.dir(ASSET, previous)}/{SUCCESS_MARKER}")
    if done is None:
        raise RuntimeError(f"dit_checkpoint {stage} starts from stage {previous}'s checkpoint: materialize "
                           f"dit_checkpoint partition {previous} first")
    return shards, card["rows"], done["checkpoint"], done["input_id"]


def _train(context, config: DitCheckpointConfig, store: TableStore, stage: str) -> dg.MaterializeResult:
    from orchestration.ray_train import run_ray_train
    from training.checkpoint import config_hash

    out = store.dir(ASSET, stage)  # inside the store's filesystem; store.uri() for what leaves this function

    def at(name: str) -> str:
        return posixpath.join(out, name)

    model_cfg, train_cfg, recipe = config.configs(stage)
    parts, rows, init_from, previous_input = _inputs(store, stage)
    shard_ids = [(posixpath.basename(p), (store.part_summary(p) or {}).get("fingerprint")) for p in parts]
    shards = [store.uri(p) for p in parts]  # what the training nodes open: paths, or URIs on object storage
    # What the weights depend on; not the step count (raising `steps` continues the run) nor the logging cadence.
    train_identity = {k: v for k, v in asdict(train_cfg).items() if k not in RESUMABLE_FIELDS}
    input_id = _hash({"model": asdict(model_cfg), "train": train_identity, "shards": shard_ids,
                      "previous": previous_input, "code": DIT_CODE_VERSION})
    store.fs.create_dir(out, recursive=True)
    done = store.read_json(at(SUCCESS_MARKER))
    if done and done.get("input_id") == input_id and done.get("steps") == train_cfg.steps \
            and store.exists(at("checkpoint.pt")):
        context.log.info(f"stage {stage}: already trained on these inputs ({done['steps']} steps); nothing to do")
        result = {k: done[k] for k in ("steps", "final_loss", "samples_per_second", "params")}
        result.update(checkpoint_path=store.uri(at("checkpoint.pt")), metrics_path=store.uri(at("metrics.jsonl")),
                      preview_path=store.uri(at("samples.png")) if store.exists(at("samples.png")) else None)
        reused = True
    else:
        started = store.read_json(at(INPUTS_MARKER))
        if started and started.get("input_id") != input_id:  # not a resume: other data, config or starting weights
            context.log.info(f"stage {stage}: inputs changed since the last run; training starts over")
            for name in STATE_FILES:
                _delete(store, at(name))
        _delete(store, at(SUCCESS_MARKER))  # a killed run must not look finished
        store.write_json(at(INPUTS_MARKER), {"input_id": input_id, "run_id": context.run.run_id})
        _require_resources(train_cfg)
        context.log.info(f"stage {stage}: recipe {recipe}, model {config.model_size}, {rows} rows in "
                         f"{len(shards)} shards, {train_cfg.steps} steps, from {init_from or 'scratch'}")
        result = run_ray_train(model_cfg, train_cfg, shards, store.uri(out), init_from=init_from, resume=True,
                               cpus_per_worker=CPUS_PER_WORKER)
        reused = False

    records = read_metrics(store, at("metrics.jsonl"))
    fell, first, last = loss_fell(records)
    ckpt = _checkpoint_summary(store, at("checkpoint.pt"), reused)
    steps_logged = [r["step"] for r in records]
    checks = [
        # a warning, not an error: a later stage that starts from a converged checkpoint may legitimately plateau
        dg.AssetCheckResult(check_name="loss_falls", passed=fell, severity=dg.AssetCheckSeverity.WARN,
                            metadata={"first_loss": first, "last_loss": last}),
        dg.AssetCheckResult(check_name="checkpoint_loads", passed=int(ckpt["step"]) == train_cfg.steps
                            and ckpt["model_config_hash"] == config_hash(model_cfg),
                            metadata={"step": int(ckpt["step"]), "checked": ckpt["source"]}),
        dg.AssetCheckResult(check_name="metrics_complete",
                            passed=bool(steps_logged) and steps_logged == sorted(set(steps_logged))
                            and steps_logged[-1] == train_cfg.steps,
                            metadata={"lines": len(records)}),
    ]
    if not reused:
        store.write_json(at(SUCCESS_MARKER), {
            "stage": stage, "recipe": recipe, "model_size": config.model_size, "input_id": input_id,
            "checkpoint": store.uri(at("checkpoint.pt")), "init_from": init_from, "shards": shards, "rows": rows,
            "steps": result["steps"], "final_loss": result["final_loss"], "params": result["params"],
            "samples_per_second": result["samples_per_second"], "run_id": context.run.run_id})

    curves = {}
    for key in STAGE_KEYS[:STAGE_KEYS.index(stage) + 1]:  # the curriculum so far, each stage on its own steps
        stage_records = records if key == stage else read_metrics(store, posixpath.join(store.dir(ASSET, key),
                                                                                         "metrics.jsonl"))
        curves[f"{key}: training windows"] = ([r["step"] for r in stage_records], [r["loss"] for r in stage_records])
        evals = [(r["step"], r["eval_loss"]) for r in stage_records if "eval_loss" in r]
        if stage_records and "eval_loss_initial" in stage_records[0]:
            evals.insert(0, (0, stage_records[0]["eval_loss_initial"]))
        if evals:
            curves[f"{key}: fixed batch"] = ([e[0] for e in evals], [e[1] for e in evals])
    metadata = {
        "recipe": recipe, "model_size": config.model_size, "params": int(result["params"]),
        "steps": int(result["steps"]), "first_loss": round(first, 5), "final_loss": round(last, 5),
        "loss_measure": "fixed-batch eval loss (EMA), stage start -> last fifth"
        if any("eval_loss" in r for r in records) else "training-window loss, first window -> last fifth",
        "samples_per_second": round(float(result["samples_per_second"] or 0.0), 2), "trained_rows": rows,
        "workers": train_cfg.num_workers, "strategy": train_cfg.strategy if train_cfg.num_workers > 1 else "single",
        "shards": len(shards), "init_from": init_from or "scratch", "reused": reused,
        "loss_curve": dg.MetadataValue.md(png_markdown(loss_curve_plot(curves, f"DiT loss, stages up to {stage}"),
                                                       "loss curve")),
        "checkpoint": dg.MetadataValue.path(store.uri(at("checkpoint.pt"))),
    }
    grid = store.read_bytes(at("samples.png")) if result.get("preview_path") else None
    if grid is not None:
        metadata["samples"] = dg.MetadataValue.md(png_markdown(grid, "Euler samples with CFG, EMA weights"))
    return dg.MaterializeResult(metadata=metadata, check_results=checks)
