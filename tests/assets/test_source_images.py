"""`source_images` materialized through Dagster on a local Ray cluster: accounting, idempotent reruns, resumption."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest

from assets.source_images import ASSET, source_drops, source_images
from curation.ingest import INGEST_CODE_VERSION
from curation.sources import canonical_uri, drop_key
from orchestration.definitions import build_resources
from orchestration.storage import SUCCESS_MARKER, TableStore
from tests.conftest import encode, make_image

pytestmark = pytest.mark.slow


def hostile_drop(root):
    root.mkdir()
    good = encode(make_image(seed=1), "JPEG")
    for i in range(5):
        (root / f"img{i}.jpg").write_bytes(encode(make_image(seed=10 + i), "JPEG"))
    (root / "img0.txt").write_text("caption zero")
    (root / "zero.jpg").write_bytes(b"")
    (root / "trunc.jpg").write_bytes(good[: len(good) // 2])
    (root / "notes.txt").write_text("not an image, no companion")
    (root / "bomb.png").write_bytes(encode(make_image(200, 200), "PNG"))
    os.symlink("/etc/hostname", root / "leak.jpg")
    return root


def materialize(storage, source, instance, **config):
    key = drop_key(str(source))
    store = TableStore(storage)
    store.register_source(key, canonical_uri(str(source)))
    if not instance.has_dynamic_partition(source_drops.name, key):
        instance.add_dynamic_partitions(source_drops.name, [key])
    run_config = {"ops": {"source_images": {"config": {"min_side": 32, "max_pixels": 30_000, "files_per_unit": 4,
                                                       **config}}}}
    result = dg.materialize([source_images], partition_key=key, instance=instance,
                            resources=build_resources(storage_root=storage), run_config=run_config)
    mat = result.asset_materializations_for_node("source_images")[0]
    (check,) = result.get_asset_check_evaluations()
    return key, {k: getattr(v, "value", v) for k, v in mat.metadata.items()}, check


@pytest.fixture
def instance():
    with dg.instance_for_test() as inst:
        yield inst


def test_every_input_is_accounted_for(ray_session, tmp_path, storage, instance):
    source = hostile_drop(tmp_path / "drop")
    key, meta, check = materialize(storage, source, instance)
    assert check.passed, check.metadata
    assert meta["total"] == 10 and meta["kept"] == 5 and meta["dropped"] == 5
    assert meta["dropped_empty"] == 1 and meta["dropped_truncated"] == 1
    assert meta["dropped_decompression_bomb"] == 1 and meta["dropped_symlink_outside_root"] == 1
    assert meta["dropped_orphan_sidecar"] == 1
    store = TableStore(storage)
    rows = store.read_table(store.dir(ASSET, key), columns=["source_uri", "metadata"]).to_pylist()
    assert len(rows) == 5
    assert any(json.loads(r["metadata"])["sidecar"].get("caption") == "caption zero" for r in rows)
    drops = store.read_decisions(ASSET).to_pylist()
    assert sum(d["decision"] == "drop" for d in drops) == 5
    assert all(d["stage"] == "ingest" and d["run_id"] and d["code_version"] == INGEST_CODE_VERSION for d in drops)
    assert store.read_json(f"{store.dir(ASSET, key)}/{SUCCESS_MARKER}")["accounting_passed"] is True


def test_rerun_is_idempotent_and_resumes(ray_session, tmp_path, storage, instance):
    source = hostile_drop(tmp_path / "drop")
    key, first, _ = materialize(storage, source, instance)
    store = TableStore(storage)
    before = store.read_table(store.dir(ASSET, key), columns=["sample_id", "source_uri"]).sort_by("source_uri")
    _, second, check = materialize(storage, source, instance)
    assert check.passed and second["parts_reused"] == second["parts"] == first["parts"]
    after = store.read_table(store.dir(ASSET, key), columns=["sample_id", "source_uri"]).sort_by("source_uri")
    assert after.equals(before)
    assert store.read_decisions(ASSET).num_rows == 5  # no duplicated ledger rows

    # a run killed mid-asset leaves some parts missing: the rerun redoes only those
    os.remove(store.part_path(ASSET, key, 1))
    _, third, check = materialize(storage, source, instance)
    assert check.passed and third["parts_reused"] == third["parts"] - 1
    assert store.read_table(store.dir(ASSET, key), columns=["source_uri"]).num_rows == 5


def test_changed_drop_and_changed_config_recompute_what_they_affect(ray_session, tmp_path, storage, instance):
    source = hostile_drop(tmp_path / "drop")
    key, first, _ = materialize(storage, source, instance)
    (source / "zzz_new.jpg").write_bytes(encode(make_image(seed=77), "JPEG"))
    _, second, check = materialize(storage, source, instance)
    assert check.passed and second["total"] == 11 and second["kept"] == 6
    assert second["parts_reused"] >= 1
    for name in os.listdir(source):
        if name.startswith(("img", "zzz")):
            continue
        os.remove(source / name)  # the drop shrinks: stale parts must go
    _, third, check = materialize(storage, source, instance, min_side=8)
    # the 6 images left are kept; each of the 5 removed inputs is a `source_removed` ledger row
    assert check.passed and third["total"] == 11 and third["kept"] == 6 and third["parts_reused"] == 0
    assert third["dropped_source_removed"] == 5
    store = TableStore(storage)
    assert len(store.list_parts(store.dir(ASSET, key))) == third["parts"]
    drops = store.read_decisions(ASSET).filter(dg_field_drop())
    assert set(drops.column("reason").to_pylist()) == {"source_removed"} and drops.num_rows == 5


def dg_field_drop():
    import pyarrow.compute as pc

    return pc.field("decision") == "drop"


def test_unregistered_partition_fails_with_a_clear_message(ray_session, storage, instance):
    instance.add_dynamic_partitions(source_drops.name, ["ghost-00000000"])
    result = dg.materialize([source_images], partition_key="ghost-00000000", instance=instance,
                            resources=build_resources(storage_root=storage), raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "not registered" in failure.event_specific_data.error.to_string()


CONCURRENT_RUN = """
import sys
from orchestration import cli
sys.exit(cli.main(["run", "--source", sys.argv[1], "--storage", sys.argv[2], "--config", sys.argv[3],
                   "--select", "key:source_images or key:image_features", "--wait"]))
"""


def test_two_runs_of_the_same_partition_at_once_leave_consistent_output(tmp_path, storage):
    """Two `curate run` started at once on one storage: the storage lock queues the second (`--wait`; without it,
    exit 2), so the Dagster instance is created once; the partition holds every input exactly once, and the later
    runs find everything done."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    source = hostile_drop(tmp_path / "drop")
    for i in range(12):
        (source / f"more{i}.jpg").write_bytes(encode(make_image(seed=100 + i), "JPEG"))
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"assets": {"source_images": {"min_side": 32, "max_pixels": 30_000,
                                                                   "files_per_unit": 3}}, "ray": {"num_cpus": 1}}))
    repo = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "RAY_ADDRESS")}
    procs = [subprocess.Popen([sys.executable, "-c", CONCURRENT_RUN, str(source), storage, str(config)], cwd=repo,
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]

    store = TableStore(storage)
    key = drop_key(str(source))
    rows = store.read_table(store.dir(ASSET, key), columns=["sample_id", "source_uri"]).to_pylist()
    ledger = store.read_decisions(ASSET).to_pylist()
    uris = [r["source_uri"] for r in rows] + [d["source_uri"] for d in ledger if d["decision"] == "drop"]
    assert len(uris) == len(set(uris)) == 22  # 17 images + 5 hostile inputs (the sidecar belongs to img0)
    features = store.read_table(store.dir("image_features", key), columns=["sample_id"]).column("sample_id")
    assert sorted(features.to_pylist()) == sorted(r["sample_id"] for r in rows)
    assert store.read_json(f"{store.dir(ASSET, key)}/{SUCCESS_MARKER}")["accounting_passed"] is True
