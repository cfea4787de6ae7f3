"""dit_checkpoint trains a stage on 2 Ray Train workers (DDP, gloo on CPU); a reused stage checks its checkpoint
from the stored summary without loading (or downloading) it."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pytest

from orchestration.storage import SUCCESS_MARKER, TableStore
from tests.training.shards import write_shard

pytestmark = pytest.mark.slow

CONFIG = {"recipes": {"256": "demo-32"}, "steps": 10, "log_every": 5, "checkpoint_every": 5, "num_workers": 2,
          "text_encoder": "hash", "teacher": "none"}


def _materialize(store: TableStore):
    from assets import ALL_ASSETS
    from orchestration.definitions import build_resources

    with dg.instance_for_test() as instance:
        result = dg.materialize(ALL_ASSETS, selection=["dit_checkpoint"], partition_key="256", instance=instance,
                                resources=build_resources(storage_root=store.root),
                                run_config={"ops": {"dit_checkpoint": {"config": CONFIG}}})
    assert result.success
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    return result.asset_materializations_for_node("dit_checkpoint")[0].metadata, checks


def test_two_worker_stage_and_reuse_without_loading(tmp_path, ray_session, monkeypatch):
    store = TableStore(str(tmp_path / "storage"))
    shard_dir = Path(store.dir("training_shards", "256"))
    for i in range(2):  # one shard per rank
        write_shard(shard_dir / f"part-{i:05d}.parquet", [(32, 32)] * 4 + [(40, 24)] * 4, start_seed=10 * i)
    store.write_json(f"{shard_dir}/{SUCCESS_MARKER}", {"stage": "256", "rows": 16})

    meta, checks = _materialize(store)
    assert meta["workers"].value == 2 and meta["strategy"].value == "ddp" and meta["reused"].value is False
    assert all(c.passed for name, c in checks.items() if name != "loss_falls")
    out = Path(store.dir("dit_checkpoint", "256"))
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [5, 10] and {m["world_size"] for m in lines} == {2}
    assert checks["checkpoint_loads"].metadata["checked"].value == "checkpoint.pt"

    import training.checkpoint

    def refuse(path):
        raise AssertionError(f"a reused stage loaded {path}")

    monkeypatch.setattr(training.checkpoint, "load_checkpoint", refuse)
    meta, checks = _materialize(store)
    assert meta["reused"].value is True and checks["checkpoint_loads"].passed
    assert checks["checkpoint_loads"].metadata["checked"].value == "checkpoint.json"


def test_a_worker_group_larger_than_the_cluster_fails_at_once(ray_session, monkeypatch):
    from dataclasses import replace

    from assets.dit_checkpoint import _require_resources
    from training.config import TrainConfig

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    cpus = ray_session.cluster_resources()["CPU"]
    _require_resources(replace(TrainConfig(), num_workers=int(cpus)))  # the demo's 2 workers on 2 CPUs fit
    with pytest.raises(RuntimeError, match="num_workers"):
        _require_resources(replace(TrainConfig(), num_workers=int(cpus) + 1))
