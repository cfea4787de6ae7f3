"""Two gloo workers on CPU (the DDP and FSDP paths of the trainer), through `training.distributed.launch_local`.

The same `train_loop_per_worker` runs in Ray Train's workers (tests/orchestration/test_ray_train.py runs it there);
launching the ranks with torch.multiprocessing keeps these tests to seconds and lets one test SIGKILL one rank.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

from tests.training.shards import write_shard_dir
from training.config import SIZES, TrainConfig
from training.data import ShardDataset, list_shards
from training.distributed import launch_local, run_local
from training.loader import batch_loader
from training.trainer import load_checkpoint, train

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MODEL = replace(SIZES["debug"], dim=32, heads=2, kv_heads=1, depth=2, repa_depth=1, repa_hidden=16)
STEPS = 30
BASE = TrainConfig(steps=STEPS, lr=3e-3, warmup_steps=3, log_every=5, checkpoint_every=10, threads=1, stage_size=0,
                   text_encoder="hash", teacher="none", repa_weight=0.0, cfg_dropout=0.2, loader_workers=0,
                   prompt_length_distribution={"tags": 0.5, "short": 0.5}, preview_prompts=())


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _config(cfg: TrainConfig, shards: Path, out: Path, **extra) -> dict:
    return {"model_config": asdict(MODEL), "train_config": asdict(cfg), "shards": [str(shards)], "out_dir": str(out),
            **extra}


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return write_shard_dir(tmp_path_factory.mktemp("shards"), n_shards=4, per_shard=4, sizes=[(16, 16)])


@pytest.fixture(scope="module")
def runs(shards, tmp_path_factory) -> dict[str, Path]:
    """One 1-worker run (batch 4) and 2-worker DDP and FSDP runs (batch 2 each: the same global batch)."""
    root = tmp_path_factory.mktemp("runs")
    out = {"single": root / "single", "ddp": root / "ddp", "fsdp": root / "fsdp"}
    train(MODEL, replace(BASE, batch_size=4), str(shards), out["single"], resume=False)
    for strategy in ("ddp", "fsdp"):
        cfg = replace(BASE, batch_size=2, num_workers=2, strategy=strategy)
        results = run_local(_config(cfg, shards, out[strategy]), 2)
        assert [r["world_size"] for r in results] == [2, 2] and results[0]["steps"] == STEPS
    return out


def test_rank_shares_hold_every_sample_once_per_epoch(shards, tmp_path):
    every = {sid for b in ShardDataset(shards, 1, shuffle=False, epochs=1) for sid in b["sample_ids"]}
    for paths, world in ((shards, 2), (list_shards(shards)[:1], 2), (shards, 3)):  # 1 shard: rows split instead
        seen = [[sid for b in ShardDataset(paths, 3, seed=7 + r, rank=r, world_size=world, epochs=1)
                 for sid in b["sample_ids"]] for r in range(world)]
        flat = [sid for share in seen for sid in share]
        assert len(flat) == len(set(flat)), "a sample was drawn twice in one epoch"
        expected = every if paths == shards else {
            sid for b in ShardDataset(paths, 1, shuffle=False, epochs=1) for sid in b["sample_ids"]}
        assert set(flat) == expected and all(seen)


def test_loader_workers_and_skip_keep_the_stream(shards):
    def ids(workers, skip):
        dataset = ShardDataset(shards, 3, seed=1, rank=1, world_size=2)
        it = iter(batch_loader(dataset, skip=skip, workers=workers))
        return [tuple(next(it)["sample_ids"]) for _ in range(6)]

    inline = ids(0, 0)
    assert ids(2, 0) == inline  # decoded in two worker processes, delivered in the plan's order
    assert ids(0, 2)[:4] == inline[2:]  # a resumed stream continues where it stopped


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_workers_match_one_with_the_same_global_batch(runs, strategy):
    one, two = _metrics(runs["single"]), _metrics(runs[strategy])
    assert [m["step"] for m in two] == list(range(5, STEPS + 1, 5)) and {m["world_size"] for m in two} == {2}
    assert {m["world_size"] for m in one} == {1}
    # same seed: same initial weights; the yardstick batch comes from every shard, whatever the world size
    assert two[0]["eval_loss_initial"] == pytest.approx(one[0]["eval_loss_initial"], rel=1e-5)
    start, a, b = one[0]["eval_loss_initial"], one[-1]["eval_loss"], two[-1]["eval_loss"]
    assert a < 0.7 * start and b < 0.7 * start, (start, a, b)
    assert abs(a - b) < 0.2 * a, (a, b)  # other batches and noise, same expected progress
    assert all(m["samples_per_second"] > 0 for m in two)
    summary = json.loads((runs[strategy] / "checkpoint.json").read_text())
    ckpt_bytes = (runs[strategy] / "checkpoint.pt").read_bytes()
    assert summary["sha256"] == hashlib.sha256(ckpt_bytes).hexdigest() and summary["bytes"] == len(ckpt_bytes)
    assert summary["step"] == STEPS and summary["world_size"] == 2


def test_fsdp_trains_exactly_like_ddp(runs):
    ddp, fsdp = _metrics(runs["ddp"]), _metrics(runs["fsdp"])  # same batches and noise; sharded weights, EMA, Adam
    for key in ("loss", "grad_norm", "eval_loss"):
        assert [m[key] for m in fsdp] == pytest.approx([m[key] for m in ddp], rel=1e-4), key


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_checkpoint_moves_between_two_workers_and_one(runs, shards, tmp_path, strategy):
    out = tmp_path / "stage"
    shutil.copytree(runs[strategy], out)
    ckpt = load_checkpoint(out / "checkpoint.pt")
    single = load_checkpoint(runs["single"] / "checkpoint.pt")
    assert ckpt["world_size"] == 2 and ckpt["model"].keys() == single["model"].keys()
    assert all(ckpt["model"][k].shape == single["model"][k].shape for k in single["model"])  # gathered, not shards
    assert set(ckpt["optimizer"]["state"]) == set(single["optimizer"]["state"])  # keyed by parameter name

    one = replace(BASE, steps=STEPS + 5, batch_size=4)
    result = train(MODEL, one, str(shards), out)  # 2 workers' checkpoint -> 1 worker
    lines = _metrics(out)
    assert result.steps == STEPS + 5 and [m["step"] for m in lines][-2:] == [STEPS, STEPS + 5]
    assert lines[-1]["world_size"] == 1 and lines[-1]["loss"] < 2 * lines[0]["loss"]
    back = replace(BASE, steps=STEPS + 10, batch_size=2, num_workers=2, strategy=strategy)
    results = run_local(_config(back, shards, out), 2)  # and back to 2 workers
    lines = _metrics(out)
    assert results[0]["steps"] == STEPS + 10 and lines[-1]["world_size"] == 2
    assert [m["step"] for m in lines] == list(range(5, STEPS + 11, 5))
    final = load_checkpoint(out / "checkpoint.pt")
    assert final["step"] == STEPS + 10 and int(final["optimizer"]["state"]["dit.final.weight"]["step"]) == STEPS + 10


def _pause_at(flag: Path, step: int):
    def hook(rank: int, at: int) -> None:
        if at == step:
            flag.write_text(str(os.getpid()))
            time.sleep(300)  # until the test kills the group
    return hook


def test_sigkill_of_one_worker_resumes_with_nothing_lost_or_repeated(runs, shards, tmp_path):
    out, flag = tmp_path / "stage", tmp_path / "paused"
    cfg = replace(BASE, batch_size=2, num_workers=2, strategy="ddp")
    context, _ = launch_local(_config(cfg, shards, out), 2, on_checkpoint=_pause_at(flag, 20), timeout_s=60)
    try:
        deadline = time.time() + 120
        while not flag.exists() and time.time() < deadline:
            assert all(p.is_alive() for p in context.processes), "a worker died before the kill"
            time.sleep(0.05)
        assert flag.exists(), "the run never reached its step-20 checkpoint"
        rank1 = context.processes[1]
        os.kill(rank1.pid, signal.SIGKILL)  # one worker dies mid-stage (rank 0 is past its step-20 checkpoint)
        rank1.join(10)
        assert rank1.exitcode == -signal.SIGKILL
    finally:  # what Ray Train does when a worker dies: the rest of the group goes too, then a new group starts
        for p in context.processes:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
            p.join(10)
    killed_at = time.time()
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 20 and max(m["step"] for m in _metrics(out)) == 20

    run_local(_config(cfg, shards, out), 2)
    lines = _metrics(out)
    assert [m["step"] for m in lines] == list(range(5, STEPS + 1, 5))  # every window once
    assert all((m["time"] < killed_at) == (m["step"] <= 20) for m in lines)
    # the same batches, noise, times and dropout as the uninterrupted run: the same weights, bit for bit
    resumed, reference = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(runs["ddp"] / "checkpoint.pt")
    for part in ("model", "ema"):
        for k, v in reference[part].items():
            assert torch.equal(resumed[part][k], v), (part, k)
    assert [m["loss"] for m in lines] == pytest.approx([m["loss"] for m in _metrics(runs["ddp"])], rel=1e-6)
