"""Ray Train adapter for the DiT trainer: one `TorchTrainer` run per curriculum stage.

The pure loop is `training.trainer.train_loop_per_worker`; Ray Train starts `num_workers` processes, sets up the
torch process group (gloo on CPU, NCCL on GPU), and each process runs the loop (DDP/FSDP when more than one). Rank 0
writes `checkpoint.pt` / `metrics.jsonl` straight into `out_dir`, which must therefore be storage that rank 0 and the
caller share (a local path on one machine, a shared volume on a cluster). Ray's own run directory (`RunConfig`) goes
to `<out_dir>/_ray` (an absolute path, as Ray Train requires).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from training.config import ModelConfig, TrainConfig
from training.data import list_shards

log = logging.getLogger(__name__)


def _ray_worker(config: dict[str, Any]) -> dict[str, Any]:
    """Ray Train worker: the pure loop; Ray Train (v2) hands rank 0's return value to `Result.return_value`."""
    from training.trainer import train_loop_per_worker

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return train_loop_per_worker(config)


def run_ray_train(model_cfg: ModelConfig, train_cfg: TrainConfig, shards: list[str] | str, out_dir: str | os.PathLike,
                  init_from: str | os.PathLike | None = None, *, resume: bool = True,
                  cpus_per_worker: float = 1.0) -> dict[str, Any]:
    """Train one curriculum stage with Ray Train (Ray is started if the caller has not done so).

    Args:
        model_cfg: the DiT's shape.
        train_cfg: the stage; `num_workers` and `use_gpu` size the Ray Train worker group.
        shards: Parquet shard files and/or directories (resolved here, on the driver, to absolute paths).
        out_dir: directory for checkpoint.pt / metrics.jsonl / samples.png (shared with rank 0).
        init_from: previous stage's checkpoint.pt, or None.
        resume: continue from out_dir/checkpoint.pt if present.
        cpus_per_worker: CPUs each worker reserves (1 on a 2-core machine, so the loop never holds every CPU).

    Returns:
        The TrainResult fields (`steps`, `final_loss`, `metrics_path`, `checkpoint_path`, `samples_per_second`,
        `params`, `preview_path`) as a dict.
    """
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from orchestration.ray_adapter import init_ray

    init_ray()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_config": asdict(model_cfg), "train_config": asdict(train_cfg),
              "shards": [str(Path(p).resolve()) for p in list_shards(shards)], "out_dir": str(out),
              "init_from": str(Path(init_from).resolve()) if init_from else None, "resume": resume}
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu,
                                     resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(name=f"dit-{train_cfg.stage_size}", storage_path=str(out / "_ray")),
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
