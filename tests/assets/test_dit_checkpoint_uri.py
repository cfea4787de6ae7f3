"""dit_checkpoint on a URI storage root (`file://`: the object-storage code path, offline): the Ray Train worker
trains in a local directory and uploads checkpoint, metrics and samples to the URI; the asset reads them back through
the TableStore; a rerun is reused; the next stage starts from the stored checkpoint; lineage finds the checkpoint of a
shard; changed inputs start the stage over."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import torch

from orchestration.storage import SUCCESS_MARKER, TableStore
from tests.assets.test_dit_checkpoint_resume import REPO, RUN
from tests.training.shards import write_shard

pytestmark = pytest.mark.slow


def _config(steps: int = 6, **extra) -> dict:
    return {"recipes": {"256": "demo-32", "512": "demo-48"}, "steps": steps, "log_every": 2, "checkpoint_every": 2,
            "text_encoder": "hash", "teacher": "none", **extra}


@pytest.fixture
def uri_store(tmp_path):
    store = TableStore(f"file://{tmp_path / 'storage'}")
    assert store.base == str(tmp_path / "storage")
    for stage, sizes, seed in (("256", [(32, 32)] * 4 + [(40, 24)] * 4, 0), ("512", [(48, 48)] * 6, 100)):
        shard_dir = Path(store.dir("training_shards", stage))
        write_shard(shard_dir / "part-00000.parquet", sizes, start_seed=seed)
        store.write_json(f"{shard_dir}/{SUCCESS_MARKER}", {"stage": stage, "rows": len(sizes)})
    return store


def _materialize(store: TableStore, stage: str, config: dict):
    from assets import ALL_ASSETS
    from orchestration.definitions import build_resources

    with dg.instance_for_test() as instance:
        result = dg.materialize(ALL_ASSETS, selection=["dit_checkpoint"], partition_key=stage, instance=instance,
                                resources=build_resources(storage_root=store.root),
                                run_config={"ops": {"dit_checkpoint": {"config": config}}})
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    return result.asset_materializations_for_node("dit_checkpoint")[0].metadata, checks


def _steps(store: TableStore, stage: str) -> list[dict]:
    data = store.read_bytes(f"{store.dir('dit_checkpoint', stage)}/metrics.jsonl")
    return [json.loads(line) for line in data.decode().splitlines()]


def test_dit_checkpoint_trains_into_a_uri_storage(uri_store, ray_session):
    from orchestration.lineage import shard_rows

    store = uri_store
    out = store.dir("dit_checkpoint", "256")
    started = time.perf_counter()
    meta, checks = _materialize(store, "256", _config())
    first_seconds = time.perf_counter() - started
    assert checks["checkpoint_loads"] and checks["metrics_complete"] and "loss_falls" in checks
    assert meta["reused"].value is False and meta["steps"].value == 6 and meta["init_from"].value == "scratch"
    assert meta["checkpoint"].value == f"file://{out}/checkpoint.pt"
    assert "data:image/png;base64," in meta["samples"].value and "data:image/png;base64," in meta["loss_curve"].value
    for name in ("checkpoint.pt", "metrics.jsonl", "samples.png", SUCCESS_MARKER):
        assert store.exists(f"{out}/{name}"), name
    assert not [p for p in Path(out).iterdir() if ".tmp" in p.name]  # every upload was renamed into place
    assert Path(out, "_ray").is_dir()  # Ray's run directory, on the URI's filesystem
    ckpt = torch.load(io.BytesIO(store.read_bytes(f"{out}/checkpoint.pt")), weights_only=True)
    assert ckpt["step"] == 6 and ckpt["train_config"]["stage_size"] == 32
    assert [r["step"] for r in _steps(store, "256")] == [2, 4, 6]
    done = store.read_json(f"{out}/{SUCCESS_MARKER}")
    assert done["checkpoint"] == f"file://{out}/checkpoint.pt" and done["steps"] == 6 and done["stage"] == "256"
    assert done["shards"] == [store.uri(p) for p in store.list_parts(store.dir("training_shards", "256"))]
    assert {"run_id", "input_id", "final_loss"} <= set(done)

    again, _ = _materialize(store, "256", _config())  # unchanged inputs: reused, nothing trained
    assert again["reused"].value is True and [r["step"] for r in _steps(store, "256")] == [2, 4, 6]

    meta2, checks2 = _materialize(store, "512", _config())  # starts from the stored 256 checkpoint, by URI
    assert checks2["checkpoint_loads"] and checks2["metrics_complete"]
    assert meta2["init_from"].value == f"file://{out}/checkpoint.pt"
    out2 = store.dir("dit_checkpoint", "512")
    done2 = store.read_json(f"{out2}/{SUCCESS_MARKER}")
    assert done2["init_from"] == f"file://{out}/checkpoint.pt" and done2["steps"] == 6
    assert torch.load(io.BytesIO(store.read_bytes(f"{out2}/checkpoint.pt")), weights_only=True)["step"] == 6

    shard = store.read_part(store.list_parts(store.dir("training_shards", "512"))[0], columns=["sample_id"])
    rows = shard_rows(store, [shard.column("sample_id")[0].as_py()])
    assert rows and rows[0]["stage"] == "512"
    assert rows[0]["checkpoint"]["checkpoint"] == f"file://{out2}/checkpoint.pt"  # lineage matches URI shard paths

    before = time.time()
    changed, _ = _materialize(store, "256", _config(lr=5e-4))  # other inputs: the stored state is deleted first
    lines = _steps(store, "256")
    assert changed["reused"].value is False and [r["step"] for r in lines] == [2, 4, 6]
    assert all(r["time"] > before for r in lines)
    print(f"first stage {first_seconds:.1f}s")


def test_killed_uri_run_resumes_from_the_stored_checkpoint(uri_store, ray_session):
    store = uri_store
    out = Path(store.dir("dit_checkpoint", "256"))
    config = {**_config(steps=150), "log_every": 5, "checkpoint_every": 10}
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "RAY_ADDRESS")}
    proc = subprocess.Popen([sys.executable, "-c", RUN, store.root, json.dumps(config)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "checkpoint.pt").exists() and proc.poll() is None:
            time.sleep(0.1)
        assert (out / "checkpoint.pt").exists(), "the first run never uploaded a checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    killed_at = time.time()
    step_at_kill = int(torch.load(out / "checkpoint.pt", weights_only=True)["step"])
    assert step_at_kill < 150 and not (out / SUCCESS_MARKER).exists()

    meta, checks = _materialize(store, "256", config)
    lines = _steps(store, "256")
    assert [r["step"] for r in lines] == list(range(5, 151, 5))  # every window exactly once
    assert all(r["time"] < killed_at for r in lines if r["step"] <= step_at_kill)  # kept, not retrained
    assert all(r["time"] > killed_at for r in lines if r["step"] > step_at_kill)
    assert checks["checkpoint_loads"] and checks["metrics_complete"] and meta["reused"].value is False
