"""The Dagster code location: `dagster dev -m orchestration.definitions` or `curate ui`."""

from __future__ import annotations

import dagster as dg

from assets import ALL_ASSETS
from orchestration.automation import SourceWatch, ingest_job, recuration_schedule, source_drop_sensor
from orchestration.resources import ModelSettings, StorageResource, ray_resource


def build_resources(storage_root: str | None = None, ray_num_cpus: int | None = None) -> dict[str, object]:
    """The resources every asset may ask for; arguments override the environment-derived defaults."""
    storage = StorageResource(root=storage_root) if storage_root else StorageResource()
    return {
        "storage": storage,
        "ray_cluster": ray_resource(ray_num_cpus),
        "models": ModelSettings(),
        "source_watch": SourceWatch(),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[ingest_job],
    sensors=[source_drop_sensor],
    schedules=[recuration_schedule],
    resources=build_resources(),
    # One process per run: Ray starts once per run, not once per step (two embedded clusters on 2 cores thrash).
    executor=dg.in_process_executor,
)
