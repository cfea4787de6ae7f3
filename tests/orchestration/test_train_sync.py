"""StageSync: a training stage directory stored at a URI (`file://` here: the URI code path, offline). Upload and
download round trip atomically; a run resumes from the stored checkpoint with every metrics window exactly once; a
later stage starts from a checkpoint URI; only rank 0 uploads; a killed run's local copy is not reused."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import torch

from orchestration.storage import TableStore
from orchestration.train_sync import StageSync, download, fetch, run_synced, upload
from tests.training.shards import write_shard_dir
from training.config import SIZES, TrainConfig
from training.trainer import train_loop_per_worker

MODEL = replace(SIZES["debug"], dim=32, heads=2, kv_heads=1, depth=2, repa_depth=1, repa_hidden=16)
FAST = dict(threads=1, stage_size=0, batch_size=2, warmup_steps=1, text_encoder="hash", teacher="none",
            repa_weight=0.0, cfg_dropout=0.0, prompt_length_distribution={"short": 1.0}, preview_prompts=("a disc",),
            preview_steps=2, lr=1e-3, log_every=1, checkpoint_every=2)


def _config(shards: Path, out_uri: str, steps: int, init_from: str | None = None) -> dict:
    return {"model_config": asdict(MODEL), "train_config": asdict(TrainConfig(steps=steps, **FAST)),
            "shards": [f"file://{shards}"], "out_dir": out_uri, "init_from": init_from, "resume": True}


def _metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_upload_download_round_trip(tmp_path):
    store = TableStore(f"file://{tmp_path / 'remote'}")
    path = f"{store.base}/stage/blob.bin"
    local = tmp_path / "local.bin"
    local.write_bytes(os.urandom(3 << 20))
    upload(local, store, path)
    assert store.read_bytes(path) == local.read_bytes()
    assert os.listdir(tmp_path / "remote" / "stage") == ["blob.bin"]  # the temporary name was renamed away
    back = tmp_path / "back" / "blob.bin"
    assert download(store, path, back) and back.read_bytes() == local.read_bytes()
    assert os.listdir(back.parent) == ["blob.bin"]
    assert not download(store, f"{store.base}/stage/missing.bin", tmp_path / "missing.bin")
    assert fetch(f"file://{tmp_path}/remote/stage/blob.bin", tmp_path / "f.bin").read_bytes() == local.read_bytes()
    assert fetch(str(local), tmp_path / "unused.bin") == local  # a local path is used in place


def test_stage_resumes_from_the_stored_checkpoint(tmp_path):
    shards = write_shard_dir(tmp_path / "shards", n_shards=1, per_shard=4, sizes=[(16, 16)])
    remote = tmp_path / "remote" / "stage"
    out = f"file://{remote}"
    first = run_synced(_config(shards, out, steps=2), 0, train_loop_per_worker)
    assert first["checkpoint_path"] == f"{out}/checkpoint.pt" and first["metrics_path"] == f"{out}/metrics.jsonl"
    assert first["preview_path"] == f"{out}/samples.png" and (remote / "samples.png").stat().st_size > 0
    assert torch.load(remote / "checkpoint.pt", weights_only=True)["step"] == 2
    before = _metrics(remote / "metrics.jsonl")
    assert [m["step"] for m in before] == [1, 2]

    # a crash after the metrics upload but before the checkpoint's: lines no checkpoint covers are dropped on resume
    with open(remote / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 3, "loss": 9.0}) + "\n")
    resumed = run_synced(_config(shards, out, steps=4), 0, train_loop_per_worker)
    after = _metrics(remote / "metrics.jsonl")
    assert [m["step"] for m in after] == [1, 2, 3, 4] and after[:2] == before  # resumed at 2, not retrained
    assert resumed["steps"] == 4 and torch.load(remote / "checkpoint.pt", weights_only=True)["step"] == 4

    # the next stage starts from the stored checkpoint, by URI
    stage2 = tmp_path / "remote" / "stage2"
    second = run_synced(_config(shards, f"file://{stage2}", steps=2, init_from=f"{out}/checkpoint.pt"), 0,
                        train_loop_per_worker)
    assert second["steps"] == 2 and [m["step"] for m in _metrics(stage2 / "metrics.jsonl")] == [1, 2]
    # no init copy, no tmp; the checkpoint's stored summary beside it
    assert sorted(os.listdir(stage2)) == ["checkpoint.json", "checkpoint.pt", "metrics.jsonl", "samples.png"]


def test_prepare_and_push_per_rank(tmp_path):
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "checkpoint.pt").write_bytes(b"stored checkpoint")
    (remote / "metrics.jsonl").write_bytes(b'{"step": 1}\n')
    (tmp_path / "previous.pt").write_bytes(b"previous stage")
    out = f"file://{remote}"

    rank1 = StageSync(out, rank=1)
    assert rank1.prepare(True, f"file://{tmp_path}/previous.pt") is None  # resuming: init_from is irrelevant
    assert sorted(os.listdir(rank1.local)) == ["checkpoint.pt"]  # every rank resumes; only rank 0 keeps metrics
    (rank1.local / "checkpoint.pt").write_bytes(b"rank 1 never uploads")
    assert rank1.push() == []
    rank1.cleanup()
    assert not rank1.local.exists()

    killed = StageSync(out, rank=0)  # a run killed before its cleanup leaves its local copy behind
    (killed.local / "checkpoint.pt").write_bytes(b"stale")
    rank0 = StageSync(out, rank=0)
    assert rank0.local == killed.local and not os.listdir(rank0.local)  # the next run on the node starts clean
    rank0.prepare(True, None)
    assert (rank0.local / "checkpoint.pt").read_bytes() == b"stored checkpoint"
    assert rank0.push() == []  # nothing changed since the download
    with open(rank0.local / "metrics.jsonl", "a") as f:
        f.write('{"step": 2}\n')
    assert rank0.push() == ["metrics.jsonl"]
    assert (remote / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'
    rank0.cleanup()

    fresh = StageSync(f"file://{tmp_path}/empty", rank=0)
    local_init = fresh.prepare(True, f"file://{tmp_path}/previous.pt")
    assert Path(local_init).read_bytes() == b"previous stage" and Path(local_init).parent == fresh.local
    fresh.cleanup()
