"""Dagster software-defined assets: thin glue between the pure packages, storage and Ray."""

from assets.ai_image_probe import ai_image_probe
from assets.deduplicated_images import deduplicated_images
from assets.exclusion_signals import exclusion_signals
from assets.image_features import image_features
from assets.source_images import source_images

ALL_ASSETS = [source_images, image_features, ai_image_probe, exclusion_signals, deduplicated_images]

__all__ = ["ALL_ASSETS", "ai_image_probe", "deduplicated_images", "exclusion_signals", "image_features",
           "source_images"]
