"""Dagster Definitions, resources, automation, the Ray adapter, storage layout, lineage and the `curate` CLI."""
