"""Trainer: a tiny model overfits 4 images; checkpoints load with weights_only; resume and curriculum init;
the sampler."""

from __future__ import annotations

import io
import json
import os
from dataclasses import asdict, replace

import pytest
import torch
from PIL import Image

from tests.training.shards import write_shard_dir
from training.config import CURRICULA, SIZES, TrainConfig, config_from_dict, recipes
from training.sampler import sample, sample_grid_png
from training.text import HashTextEncoder
from training.trainer import load_checkpoint, models_from_checkpoint, train, train_loop_per_worker

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = replace(SIZES["debug"], dim=48, heads=4, kv_heads=2, depth=3, repa_depth=2, repa_hidden=32)
FAST = dict(threads=1, stage_size=0, batch_size=4, warmup_steps=2, text_encoder="hash", teacher="none",
            repa_weight=0.0, cfg_dropout=0.0, prompt_length_distribution={"short": 1.0}, preview_prompts=())


def _metrics(path):
    return [json.loads(line) for line in open(path)]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_shard_dir(tmp_path_factory.mktemp("shards"), n_shards=1, per_shard=4)


def test_tiny_model_overfits_four_images(shards, tmp_path):
    cfg = TrainConfig(steps=120, lr=2e-3, log_every=1, checkpoint_every=1000, **FAST)
    result = train(MODEL, cfg, str(shards), tmp_path, resume=False)
    losses = [m["loss_fm"] for m in _metrics(result.metrics_path)]
    assert len(losses) == 120 and result.steps == 120
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < 0.5 * first, (first, last)
    metrics = _metrics(result.metrics_path)  # the EMA weights on one fixed batch: falls with the weights alone
    assert "eval_loss_initial" in metrics[0] and all("eval_loss_initial" not in m for m in metrics[1:])
    assert metrics[-1]["eval_loss"] < 0.5 * metrics[0]["eval_loss_initial"]
    assert result.samples_per_second > 0 and result.params == sum(p.numel() for p in
                                                                   models_from_checkpoint(result.checkpoint_path)[0]
                                                                   .parameters())


def test_fixed_eval_batch_is_fixed(shards):
    from training.data import ShardDataset
    from training.text import load_text_encoder
    from training.trainer import eval_loss, fixed_eval_batch

    encoder = load_text_encoder("hash", dim=MODEL.text_dim)

    def batch():
        return fixed_eval_batch(ShardDataset(str(shards), 4, seed=1, multiple=MODEL.patch_size), encoder, None,
                                torch.device("cpu"))

    a, b = batch(), batch()
    assert all(torch.equal(a[k], b[k]) for k in a) and a["x0"].shape[0] == 4 * 4
    assert 0 < a["t"].min() and a["t"].max() < 1 and len(set(a["t"].tolist())) == 16
    from training.model import DiT

    model = DiT(MODEL)
    assert eval_loss(model, a) == eval_loss(model, b)


def test_checkpoint_weights_only_resume_and_init_from(shards, tmp_path):
    out = tmp_path / "stage1"
    cfg = TrainConfig(steps=4, lr=1e-3, log_every=1, checkpoint_every=2, **FAST)
    first = train(MODEL, cfg, str(shards), out)
    ckpt = torch.load(first.checkpoint_path, weights_only=True)
    assert ckpt["step"] == 4 and set(ckpt) >= {"model", "ema", "optimizer", "model_config", "train_config"}
    assert config_from_dict(type(cfg), ckpt["train_config"]) == cfg
    assert ckpt["model_config"] == asdict(MODEL)
    assert not any(name.startswith(".") for name in os.listdir(out))  # no temporary files left
    # A crash after step 4 left metrics of steps 5-6 that no checkpoint covers: resume rewrites them.
    with open(first.metrics_path, "a") as f:
        for step in (5, 6):
            f.write(json.dumps({"step": step, "loss": 9.0}) + "\n")
    resumed = train(MODEL, replace(cfg, steps=7), str(shards), out)
    steps = [m["step"] for m in _metrics(resumed.metrics_path)]
    assert steps == [1, 2, 3, 4, 5, 6, 7] and resumed.steps == 7
    assert all(m["loss"] != 9.0 for m in _metrics(resumed.metrics_path))
    assert load_checkpoint(resumed.checkpoint_path)["step"] == 7
    again = train(MODEL, replace(cfg, steps=7), str(shards), out)  # already done: no new lines
    assert again.steps == 7 and len(_metrics(again.metrics_path)) == 7

    stage2 = train(MODEL, replace(cfg, steps=2, stage_size=16), str(shards), tmp_path / "stage2",
                   init_from=resumed.checkpoint_path)
    assert [m["step"] for m in _metrics(stage2.metrics_path)] == [1, 2]
    assert _metrics(stage2.metrics_path)[0]["bucket"] == "16x16"
    with pytest.raises(ValueError, match="different ModelConfig"):
        train(replace(MODEL, depth=2, repa_depth=1), cfg, str(shards), tmp_path / "bad",
              init_from=resumed.checkpoint_path)


def test_worker_loop_with_irepa_teacher_and_preview(shards, tmp_path):
    cfg = TrainConfig(**{**FAST, "teacher": "embedded", "repa_weight": 0.5, "cfg_dropout": 0.5,
                         "preview_prompts": ("a disc 1", "a disc 2"), "preview_steps": 3},
                      steps=3, lr=1e-3, log_every=1, checkpoint_every=10)
    result = train_loop_per_worker({"model_config": asdict(MODEL), "train_config": asdict(cfg),
                                    "shards": [str(shards)], "out_dir": str(tmp_path)})
    metrics = _metrics(result["metrics_path"])
    assert all(-1.0 <= m["loss_repa"] <= 1.0 and m["loss_repa"] != 0 for m in metrics)  # a negative cosine
    assert all(m["loss"] == pytest.approx(m["loss_fm"] + 0.5 * m["loss_repa"], rel=1e-5) for m in metrics)
    assert load_checkpoint(result["checkpoint_path"])["projector"]
    with Image.open(result["preview_path"]) as img:
        assert img.format == "PNG"


def test_sampler_and_grid():
    torch.manual_seed(0)
    from training.model import DiT

    model = DiT(replace(MODEL, text_dim=16))
    torch.nn.init.normal_(model.final.weight, std=0.1)
    enc = HashTextEncoder(dim=16)
    a = sample(model, enc, ["red", "blue"], size=(24, 16), steps=3, cfg_scale=2.0, seed=1)
    b = sample(model, enc, ["red", "blue"], size=(24, 16), steps=3, cfg_scale=2.0, seed=1)
    assert a.shape == (2, 3, 16, 24) and a.min() >= -1 and a.max() <= 1
    torch.testing.assert_close(a, b)
    png = sample_grid_png(a)
    with Image.open(io.BytesIO(png)) as img:
        assert img.size == (2 * 24 + 3 * 2, 16 + 2 * 2)


def test_recipes_and_curricula():
    table = recipes()
    assert {"demo", "256", "512", "1024"} <= set(table)
    for stages in CURRICULA.values():
        assert all(name in table for name in stages)
    assert [table[s].stage_size for s in CURRICULA["demo"]] == [32, 48, 64]
    assert table["1024"].precision == "bf16" and table["demo"].precision == "fp32"
    with pytest.raises(ValueError):
        TrainConfig(space="latent")
