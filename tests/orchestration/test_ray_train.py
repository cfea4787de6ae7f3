"""Ray Train adapter: a one-worker TorchTrainer run of the DiT loop on three tiny shards."""

from __future__ import annotations

import json

import pytest
import torch

from tests.training.shards import write_shard_dir
from training.config import SIZES, TrainConfig

pytestmark = pytest.mark.slow


def test_one_worker_ray_train_run(ray_session, tmp_path):
    from orchestration.ray_train import run_ray_train

    shards = write_shard_dir(tmp_path / "shards", n_shards=3, per_shard=3, sizes=[(16, 16), (24, 16)])
    cfg = TrainConfig(stage_size=0, steps=4, batch_size=2, log_every=2, checkpoint_every=2, text_encoder="hash",
                      teacher="none", repa_weight=0.0, threads=1, num_workers=1, use_gpu=False)
    result = run_ray_train(SIZES["debug"], cfg, str(shards), tmp_path / "stage1")
    assert result["steps"] == 4 and result["params"] > 0 and result["samples_per_second"] > 0
    ckpt = torch.load(result["checkpoint_path"], weights_only=True)
    assert ckpt["step"] == 4 and ckpt["train_config"]["num_workers"] == 1
    assert [json.loads(line)["step"] for line in open(result["metrics_path"])] == [2, 4]
    assert (tmp_path / "stage1" / "_ray").is_dir()  # Ray's run directory stays inside out_dir


def test_two_worker_fsdp_ray_train_run(ray_session, tmp_path):
    from orchestration.ray_train import run_ray_train

    shards = write_shard_dir(tmp_path / "shards", n_shards=2, per_shard=4, sizes=[(16, 16)])
    cfg = TrainConfig(stage_size=0, steps=4, batch_size=2, log_every=2, checkpoint_every=2, text_encoder="hash",
                      teacher="none", repa_weight=0.0, threads=1, num_workers=2, strategy="fsdp", loader_workers=0)
    result = run_ray_train(SIZES["debug"], cfg, str(shards), tmp_path / "stage1")
    assert result["steps"] == 4
    lines = [json.loads(line) for line in open(result["metrics_path"])]
    assert [m["step"] for m in lines] == [2, 4] and {m["world_size"] for m in lines} == {2}
    ckpt = torch.load(result["checkpoint_path"], weights_only=True)
    assert ckpt["world_size"] == 2 and ckpt["model"]["final.weight"].shape == (4 * 4 * 3, SIZES["debug"].dim)
