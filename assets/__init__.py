"""Dagster software-defined assets: thin glue between the pure packages, storage and Ray."""

from assets.ai_image_probe import ai_image_probe
from assets.captions import caption_text, captions
from assets.creator_style_index import creator_style_index
from assets.dataset_reports import dataset_audit, dataset_card
from assets.deduplicated_images import deduplicated_images
from assets.dit_checkpoint import dit_checkpoint
from assets.exclusion_signals import exclusion_signals
from assets.image_features import image_features
from assets.midtraining_candidates import midtraining_candidates
from assets.ocr_annotations import ocr_annotations
from assets.prompt_variants import prompt_expansion_pairs, prompt_variants, variant_quality
from assets.rebalanced_images import rebalanced_images
from assets.source_images import source_images
from assets.style_embeddings import style_embeddings
from assets.style_reference_pairs import style_reference_pairs
from assets.training_shards import training_shards

ALL_ASSETS = [source_images, image_features, ai_image_probe, exclusion_signals, deduplicated_images,
              rebalanced_images, ocr_annotations, captions, prompt_variants, prompt_expansion_pairs, training_shards,
              midtraining_candidates, dit_checkpoint, dataset_card, dataset_audit,
              style_embeddings, style_reference_pairs, creator_style_index,
              caption_text, variant_quality]  # asset checks defined apart from their asset's body

__all__ = ["ALL_ASSETS", "ai_image_probe", "caption_text", "captions", "creator_style_index", "dataset_audit",
           "dataset_card", "deduplicated_images", "dit_checkpoint", "exclusion_signals", "image_features",
           "midtraining_candidates", "ocr_annotations", "prompt_expansion_pairs", "prompt_variants",
           "rebalanced_images", "source_images", "style_embeddings", "style_reference_pairs", "training_shards",
           "variant_quality"]
