"""Dagster software-defined assets: thin glue between the pure packages, storage and Ray."""

from assets.deduplicated_images import deduplicated_images
from assets.image_features import image_features
from assets.source_images import source_images

ALL_ASSETS = [source_images, image_features, deduplicated_images]

__all__ = ["ALL_ASSETS", "deduplicated_images", "image_features", "source_images"]
