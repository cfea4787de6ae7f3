"""The source sensor registers new settled drops; the re-curation schedule asks for every registered drop."""

from __future__ import annotations

import datetime as dt
import os
import time

import dagster as dg

from assets.source_images import source_drops
from orchestration.automation import SourceWatch, recuration_schedule, source_drop_sensor
from orchestration.resources import StorageResource
from orchestration.storage import TableStore


def test_sensor_adds_a_partition_and_a_run_per_new_settled_drop(tmp_path, storage):
    roots = tmp_path / "incoming"
    (roots / "drop_a").mkdir(parents=True)
    (roots / "drop_b.tar").write_bytes(b"")
    (roots / ".hidden").mkdir()
    old = time.time() - 3600
    for p in (roots / "drop_a", roots / "drop_b.tar"):
        os.utime(p, (old, old))
    (roots / "drop_fresh").mkdir()  # still being copied: not settled
    watch = SourceWatch(roots=[str(roots)], settle_seconds=60)
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"source_watch": watch,
                                                                        "storage": StorageResource(root=storage)})
        result = source_drop_sensor(context)
        keys = sorted(r.partition_key for r in result.run_requests)
        assert len(keys) == 2 and keys[0].startswith("drop_a-") and keys[1].startswith("drop_b-")
        (request,) = result.dynamic_partitions_requests
        assert sorted(request.partition_keys) == keys
        assert TableStore(storage).source_uri(keys[0]) == str(roots / "drop_a")
        instance.add_dynamic_partitions(source_drops.name, keys)
        again = source_drop_sensor(dg.build_sensor_context(instance=instance, resources={
            "source_watch": watch, "storage": StorageResource(root=storage)}))
        assert not again.run_requests and again.skip_reason


def test_schedule_requests_every_registered_drop():
    with dg.instance_for_test() as instance:
        when = dt.datetime(2026, 11, 23, 3, 0, tzinfo=dt.UTC)
        assert isinstance(recuration_schedule(dg.build_schedule_context(instance, scheduled_execution_time=when)),
                          dg.SkipReason)
        instance.add_dynamic_partitions(source_drops.name, ["a-1", "b-2"])
        requests = recuration_schedule(dg.build_schedule_context(instance, scheduled_execution_time=when))
        assert sorted(r.partition_key for r in requests) == ["a-1", "b-2"]
        assert len({r.run_key for r in requests}) == 2
