"""Ray Train adapter for the DiT trainer: one `TorchTrainer` run per curriculum stage.

The pure loop is `training.trainer.train_loop_per_worker`; Ray Train starts `num_workers` processes, sets up the
torch process group (gloo on CPU, NCCL on GPU), and each process runs the loop (DDP/FSDP when more than one).

`out_dir` is a local path or a URI (any storage `orchestration.storage.TableStore` opens: `s3://`, `gs://`,
`file://`, ...). A local path is shared storage: rank 0 writes `checkpoint.pt` / `metrics.jsonl` / `samples.png`
straight into it (one machine, or a volume every node mounts). A URI needs no shared volume: each worker trains in a
local temporary directory on its own node and rank 0 uploads the stage files after every checkpoint
(`orchestration.train_sync`), so a killed run resumes from the last stored checkpoint wherever its workers land.
Shards and `init_from` may be URIs too. Ray's own run directory (`RunConfig`) goes to `<out_dir>/_ray` (an absolute
path, or the URI's filesystem, as Ray Train requires).
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.config import ModelConfig, TrainConfig
from training.data import is_uri, list_shards

log = logging.getLogger(__name__)


def _ray_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: the pure loop (in a local copy of `out_dir` when that is a URI); Ray Train (v2) hands rank
    0's return value to `Result.return_value`."""
    from training.trainer import train_loop_per_worker

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not is_uri(config["out_dir"]):
        return train_loop_per_worker(config)
    import ray.train

    from orchestration.train_sync import run_synced

    return run_synced(config, ray.train.get_context().get_world_rank(), train_loop_per_worker)


def _local_or_uri(path: str | os.PathLike) -> str:
    return str(path) if is_uri(path) else str(Path(path).resolve())


def run_ray_train(model_cfg: ModelConfig, train_cfg: TrainConfig, shards: list[str] | str, out_dir: str | os.PathLike,
                  init_from: str | os.PathLike | None = None, *, resume: bool = True,
                  cpus_per_worker: float = 1.0) -> dict[str, Any]:
    """Train one curriculum stage with Ray Train (Ray is started if the caller has not done so).

    Args:
        model_cfg: the DiT's shape.
        train_cfg: the stage; `num_workers` and `use_gpu` size the Ray Train worker group.
        shards: Parquet shard files and/or directories, paths or URIs (resolved here, on the driver, to files:
            absolute paths or URIs).
        out_dir: directory for checkpoint.pt / metrics.jsonl / samples.png: a path shared with rank 0, or a URI.
        init_from: previous stage's checkpoint.pt (a path or a URI), or None.
        resume: continue from out_dir/checkpoint.pt if present.
        cpus_per_worker: CPUs each worker reserves (the controller reserves none: 2 workers of 1 fit 2 cores).

    Returns:
        The TrainResult fields (`steps`, `final_loss`, `metrics_path`, `checkpoint_path`, `samples_per_second`,
        `params`, `preview_path`) as a dict; the paths are under `out_dir` (URIs when it is one).
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestration.ray_adapter import init_ray
    from orchestration.storage import TableStore

    init_ray()
    if is_uri(out_dir):
        out = str(out_dir).rstrip("/")
        store = TableStore(out)
        ray_storage = {"storage_path": posixpath.join(store.base, "_ray"), "storage_filesystem": store.fs}
    else:
        out = str(Path(out_dir).resolve())
        Path(out).mkdir(parents=True, exist_ok=True)
        ray_storage = {"storage_path": posixpath.join(out, "_ray")}
    config = {"model_config": asdict(model_cfg), "train_config": asdict(train_cfg),
              "shards": [_local_or_uri(p) for p in list_shards(shards)], "out_dir": out,
              "init_from": _local_or_uri(init_from) if init_from else None, "resume": resume}
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=f"dit-{train_cfg.stage_size}", **ray_storage),
    )
    log.info("Ray Train: %d worker(s), gpu=%s, stage %dpx -> %s (cluster CPUs %s)", train_cfg.num_workers,
             train_cfg.use_gpu, train_cfg.stage_size, out, ray.cluster_resources().get("CPU"))
    result = trainer.fit()
    if getattr(result, "error", None):
        raise RuntimeError(f"Ray Train run failed: {result.error}") from result.error
    value = getattr(result, "return_value", None)
    if not isinstance(value, dict):
        raise RuntimeError(f"Ray Train returned no TrainResult (got {value!r}); is RAY_TRAIN_V2_ENABLED=0 set?")
    keys = ("steps", "final_loss", "metrics_path", "checkpoint_path", "samples_per_second", "params", "preview_path")
    return {k: value.get(k) for k in keys}
