"""The storage layout: atomic parts with their summary in the footer, stale-part cleanup, the drop registry."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from orchestration.storage import TableStore


def test_part_round_trip_with_summary(storage):
    store = TableStore(storage)
    path = store.part_path("things", "p1", 3)
    assert path.endswith("things/p1/part-00003.parquet")
    store.write_parquet(path, pa.table({"x": [1, 2, 3]}), {"counts": {"total": 3}})
    assert store.part_summary(path) == {"counts": {"total": 3}}
    assert store.list_parts(store.dir("things", "p1")) == [path]
    assert store.read_table(store.asset_dir("things"), filter=pads.field("x") > 1).column("x").to_pylist() == [2, 3]


def test_no_temporary_file_survives_a_failed_write(storage, monkeypatch):
    store = TableStore(storage)
    path = store.part_path("things", None, 0)

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pyarrow.parquet.write_table", boom)
    with pytest.raises(RuntimeError):
        store.write_parquet(path, pa.table({"x": [1]}))
    assert not store.exists(path)
    assert store.list_parts(store.dir("things")) == []
    import os

    assert not [n for n in os.listdir(store.dir("things")) if ".tmp-" in n]


def test_stale_parts_and_temp_files_are_removed(storage):
    store = TableStore(storage)
    for i in range(4):
        store.write_parquet(store.part_path("a", "p", i), pa.table({"x": [i]}))
    with open(store.part_path("a", "p", 9) + ".tmp-dead", "wb") as f:
        f.write(b"half")
    removed = store.remove_parts_from(store.dir("a", "p"), 2)
    assert len(removed) == 3
    assert [p.rsplit("/", 1)[1] for p in store.list_parts(store.dir("a", "p"))] == ["part-00000.parquet",
                                                                                   "part-00001.parquet"]


def test_empty_reads_keep_the_schema(storage):
    store = TableStore(storage)
    schema = pa.schema([("a", pa.string()), ("b", pa.int64())])
    assert store.read_table(store.dir("nothing"), schema=schema).schema == schema
    assert store.read_table(store.dir("nothing"), columns=["b"], schema=schema).schema.names == ["b"]


def test_source_registry(storage):
    store = TableStore(storage)
    store.register_source("photos-1", "/data/photos")
    store.register_source("photos-1", "/data/photos")  # idempotent
    with pytest.raises(ValueError):
        store.register_source("photos-1", "/elsewhere")
    assert store.source_uri("photos-1") == "/data/photos"
    assert store.registered_sources() == {"photos-1": "/data/photos"}
    with pytest.raises(KeyError, match="not registered"):
        store.source_uri("unknown")


def test_store_pickles_by_root(storage):
    import pickle

    store = pickle.loads(pickle.dumps(TableStore(storage)))
    assert store.root == storage and store.base.endswith("storage")


def test_registration_order_is_by_time(storage):
    import time

    store = TableStore(storage)
    store.register_source("zzz-1", "/a")
    time.sleep(0.01)
    store.register_source("aaa-2", "/b")
    assert store.registration_order() == ["zzz-1", "aaa-2"]


def test_lock_excludes_a_second_run_and_recovers_a_dead_holder(tmp_path):
    import json
    import subprocess

    from orchestration.storage import TableStore

    store = TableStore(str(tmp_path))
    with store.lock("deduplicated_images", owner="run-a"):
        with pytest.raises(RuntimeError, match="run-a"):
            with store.lock("deduplicated_images", owner="run-b"):
                pass
    with store.lock("deduplicated_images", owner="run-b"):  # released: free again
        pass
    dead = subprocess.Popen(["true"])
    dead.wait()
    lock = tmp_path / "_locks" / "x.lock"
    lock.parent.mkdir(exist_ok=True)
    import socket

    lock.write_text(json.dumps({"owner": "crashed", "pid": dead.pid, "host": socket.gethostname()}))
    with store.lock("x", owner="run-c"):
        assert json.loads(lock.read_text())["owner"] == "run-c"
    assert not lock.exists()
