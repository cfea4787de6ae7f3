"""Sensors and schedules: new source drops start their own ingest run; a weekly schedule re-curates."""

import os
import time

import dagster as dg
import fsspec
from pydantic import Field

from assets.source_images import source_drops, source_images
from curation.sources import canonical_uri, drop_key
from orchestration.resources import StorageResource

DEFAULT_RECURATION_CRON = "0 3 * * 1"

ingest_job = dg.define_asset_job(
    "ingest_source_drop", selection=dg.AssetSelection.assets(source_images), partitions_def=source_drops,
    description="Ingest one source drop (one partition of source_images).",
)


def _split_roots(value: str | None) -> list[str]:
    return [r.strip() for r in (value or "").replace(",", os.pathsep).split(os.pathsep) if r.strip()]


class SourceWatch(dg.ConfigurableResource):
    """Which folders the source sensor watches; each direct child (folder, .tar, .parquet) is one source drop."""

    roots: list[str] = Field(default_factory=lambda: _split_roots(os.environ.get("ATELIER_SOURCE_ROOTS")),
                             description="Watched roots (default: ATELIER_SOURCE_ROOTS, separated by ':' or ',').")
    settle_seconds: float = Field(
        default=60.0, description="A drop is picked up once nothing in its top level changed for this long.")

    def find_drops(self, now: float | None = None) -> list[str]:
        """Settled children of the watched roots, as canonical URIs."""
        now = time.time() if now is None else now
        drops = []
        for root in self.roots:
            fs, path = fsspec.core.url_to_fs(root)
            if not fs.exists(path):
                continue
            for info in fs.ls(path, detail=True):
                name = info["name"].rstrip("/").rsplit("/", 1)[-1]
                if name.startswith((".", "_")):
                    continue
                mtime = info.get("mtime") or info.get("LastModified")
                mtime = getattr(mtime, "timestamp", lambda m=mtime: m)()
                if mtime is not None and now - float(mtime) < self.settle_seconds:
                    continue
                child = info["name"] if "://" not in root else f"{root.split('://', 1)[0]}://{info['name']}"
                drops.append(canonical_uri(child))
        return sorted(drops)


@dg.sensor(job=ingest_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.STOPPED)
def source_drop_sensor(context: dg.SensorEvaluationContext, source_watch: SourceWatch,
                       storage: StorageResource) -> dg.SensorResult:
    """Registers each new source drop under the watched roots as a partition and requests its ingest run."""
    store = storage.store()
    known = set(context.instance.get_dynamic_partitions(source_drops.name))
    new_keys, requests = [], []
    for uri in source_watch.find_drops():
        key = drop_key(uri)
        if key in known:
            continue
        store.register_source(key, uri)
        new_keys.append(key)
        requests.append(dg.RunRequest(partition_key=key, run_key=f"ingest:{key}"))
    if not new_keys:
        return dg.SensorResult(skip_reason=f"no new settled drops under {source_watch.roots or 'no roots configured'}")
    return dg.SensorResult(run_requests=requests,
                           dynamic_partitions_requests=[source_drops.build_add_request(new_keys)])


@dg.schedule(job=ingest_job, cron_schedule=os.environ.get("ATELIER_RECURATION_CRON", DEFAULT_RECURATION_CRON),
             default_status=dg.DefaultScheduleStatus.STOPPED)
def recuration_schedule(context: dg.ScheduleEvaluationContext):
    """Re-curates every registered drop weekly: changed drops, limits or code are re-ingested, the rest reused."""
    tick = context.scheduled_execution_time.strftime("%Y%m%dT%H%M")
    keys = context.instance.get_dynamic_partitions(source_drops.name)
    if not keys:
        return dg.SkipReason("no source drops registered yet")
    return [dg.RunRequest(partition_key=key, run_key=f"recurate:{tick}:{key}") for key in keys]
