"""GPU-only checks of the trainer (`pytest -m gpu` on a CUDA machine; skipped elsewhere): a bf16 step, flash
attention when nothing is masked, FSDP on one device, and no host sync between metrics lines."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace

import pytest
import torch

from tests.training.shards import write_shard_dir
from training.config import SIZES, TrainConfig

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = replace(SIZES["debug"], dim=128, heads=4, kv_heads=2, depth=2, repa_depth=1, repa_hidden=32)
CFG = TrainConfig(steps=8, batch_size=4, lr=1e-3, warmup_steps=2, log_every=4, checkpoint_every=8, stage_size=0,
                  text_encoder="hash", teacher="none", repa_weight=0.0, cfg_dropout=0.0, use_gpu=True,
                  precision="bf16", loader_workers=1, prompt_length_distribution={"tags": 1.0}, preview_prompts=())


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shard_dir(tmp_path_factory.mktemp("shards"), n_shards=2, per_shard=8, sizes=[(32, 32)])


def test_bf16_step_on_the_gpu(shards, tmp_path):
    from training.trainer import train

    result = train(MODEL, CFG, str(shards), tmp_path, resume=False)
    lines = [json.loads(line) for line in open(result.metrics_path)]
    assert result.steps == 8 and all(torch.isfinite(torch.tensor(m["loss"])) for m in lines)
    assert lines[-1]["eval_loss"] < lines[0]["eval_loss_initial"]


def test_flash_attention_runs_when_nothing_is_masked():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from training.model import DiT

    model = DiT(MODEL).cuda()
    x, t = torch.randn(2, 3, 32, 32, device="cuda"), torch.rand(2, device="cuda")
    text = torch.randn(2, 5, MODEL.text_dim, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        velocity, _ = model(x, t, text, None)  # raises if SDPA cannot use the flash kernel
        assert torch.isfinite(velocity).all()
        mask = torch.ones(2, 5, dtype=torch.bool, device="cuda")
        with pytest.raises(RuntimeError):
            model(x, t, text, mask)  # a mask is not a flash-kernel input
    with torch.autocast("cuda", dtype=torch.bfloat16), sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        assert torch.isfinite(model(x, t, text, mask)[0]).all()  # masked batches stay on a fused kernel


def test_fsdp_on_one_device(shards, tmp_path):
    from training.distributed import run_local

    cfg = replace(CFG, strategy="fsdp", num_workers=1)
    config = {"model_config": asdict(MODEL), "train_config": asdict(cfg), "shards": [str(shards)],
              "out_dir": str(tmp_path)}
    [result] = run_local(config, 1, start_method="spawn")
    assert result["steps"] == 8
    ckpt = torch.load(result["checkpoint_path"], weights_only=True)
    assert ckpt["model"]["final.weight"].device.type == "cpu"


def test_no_host_sync_inside_a_metrics_window(shards, tmp_path):
    import warnings

    from training.trainer import train

    def syncs(steps: int) -> int:
        cfg = replace(CFG, steps=steps, log_every=8, checkpoint_every=1000, loader_workers=0)
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                train(MODEL, cfg, str(shards), tmp_path / str(steps), resume=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message).lower() for w in record)

    # one more window of 8 steps costs the line's reads (means, eval loss), not one sync per step
    assert syncs(24) - syncs(16) < 8
