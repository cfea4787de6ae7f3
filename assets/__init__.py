"""Dagster software-defined assets: thin glue between the pure packages, storage and Ray."""

from assets.source_images import source_images

ALL_ASSETS = [source_images]

__all__ = ["ALL_ASSETS", "source_images"]
