"""dit_checkpoint: a run killed mid-training resumes from its last checkpoint, with no lost or duplicated metrics;
a rerun on unchanged inputs trains nothing; raising `steps` continues the same run."""

from __future__ import annotations

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
from tests.training.shards import write_shard

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
RUN = """
import sys, dagster as dg
from assets import ALL_ASSETS
from orchestration.definitions import build_resources
storage, config = sys.argv[1], sys.argv[2]
with dg.instance_for_test() as instance:
    dg.materialize(ALL_ASSETS, selection=["dit_checkpoint"], partition_key="256", instance=instance,
                   resources=build_resources(storage_root=storage, ray_num_cpus=2),
                   run_config={"ops": {"dit_checkpoint": {"config": __import__("json").loads(config)}}})
"""


def _config(steps: int) -> dict:
    # fast settings: the parameter-free text encoder and no iREPA teacher; cadence small enough to kill in between
    return {"recipes": {"256": "demo-32"}, "steps": steps, "log_every": 5, "checkpoint_every": 10,
            "text_encoder": "hash", "teacher": "none"}


@pytest.fixture
def shard_storage(tmp_path):
    store = TableStore(str(tmp_path / "storage"))
    shard_dir = Path(store.dir("training_shards", "256"))
    shard_dir.mkdir(parents=True)
    write_shard(shard_dir / "part-00000.parquet", [(32, 32)] * 6 + [(40, 24)] * 6)
    store.write_json(f"{shard_dir}/{SUCCESS_MARKER}", {"stage": "256", "rows": 12})
    return store


def _materialize(store: TableStore, config: dict):
    from assets import ALL_ASSETS
    from orchestration.definitions import build_resources

    with dg.instance_for_test() as instance:
        return dg.materialize(ALL_ASSETS, selection=["dit_checkpoint"], partition_key="256", instance=instance,
                              resources=build_resources(storage_root=store.root),
                              run_config={"ops": {"dit_checkpoint": {"config": config}}})


def _steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_killed_training_resumes_from_its_checkpoint(shard_storage, ray_session):
    store = shard_storage
    out = Path(store.dir("dit_checkpoint", "256"))
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "RAY_ADDRESS")}
    proc = subprocess.Popen([sys.executable, "-c", RUN, store.root, json.dumps(_config(150))], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (out / "checkpoint.pt").exists() and proc.poll() is None:
            time.sleep(0.1)
        assert (out / "checkpoint.pt").exists(), "the first run never wrote a checkpoint"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    killed_at = time.time()
    step_at_kill = int(torch.load(out / "checkpoint.pt", weights_only=True)["step"])
    assert step_at_kill < 150 and not (out / SUCCESS_MARKER).exists()  # killed mid-run, not finished

    result = _materialize(store, _config(150))
    assert result.success
    steps = _steps(out)
    assert steps == list(range(5, 151, 5))  # every window exactly once
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["time"] < killed_at for r in lines if r["step"] <= step_at_kill)  # kept, not retrained
    assert all(r["time"] > killed_at for r in lines if r["step"] > step_at_kill)
    assert int(torch.load(out / "checkpoint.pt", weights_only=True)["step"]) == 150

    meta = result.asset_materializations_for_node("dit_checkpoint")[0].metadata
    assert meta["reused"].value is False
    again = _materialize(store, _config(150)).asset_materializations_for_node("dit_checkpoint")[0].metadata
    assert again["reused"].value is True and _steps(out) == steps  # unchanged inputs: nothing trained

    longer = _materialize(store, _config(160))  # more steps continue the same run
    assert _steps(out) == list(range(5, 161, 5)) and longer.success
