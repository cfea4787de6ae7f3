"""Embedding backends: the bundled open-NSFW CNN, and open_clip built from a tiny config (never downloads)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import ImageOps

from curation.embedding import EmbeddingConfig, OpenNsfwEmbedder, load_embedder
from tests.conftest import make_image

TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def test_open_nsfw_embeddings_are_normalised_and_near_duplicates_are_close():
    embedder = OpenNsfwEmbedder(threads=1)
    a = make_image(200, 150, seed=1)
    emb, nsfw = embedder.embed([a, a.resize((100, 75)), ImageOps.mirror(a), make_image(200, 150, seed=50).rotate(90)])
    assert emb.shape == (4, 1024) and emb.dtype == np.float32
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert emb[0] @ emb[1] > 0.9 and emb[0] @ emb[1] > emb[0] @ emb[3]
    assert ((nsfw >= 0) & (nsfw <= 1)).all()
    assert embedder.embed([])[0].shape == (0, 1024)


def test_open_clip_backend_from_a_tiny_local_config(tmp_path):
    import open_clip

    (tmp_path / "atelier-tiny-vit.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(tmp_path / "atelier-tiny-vit.json"))
    embedder = load_embedder(EmbeddingConfig(backend="open_clip", model="atelier-tiny-vit", pretrained=None,
                                             allow_random_weights=True))
    emb, nsfw = embedder.embed([make_image(seed=s) for s in range(3)])
    assert emb.shape == (3, 32) and np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-4)
    assert nsfw.shape == (3,) and embedder.dim == 32


def test_open_clip_without_weights_refuses_to_run(tmp_path):
    """No pretrained weights is an error naming what is missing, not a warning and random embeddings."""
    import open_clip

    (tmp_path / "atelier-tiny-vit.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(tmp_path / "atelier-tiny-vit.json"))
    for pretrained in (None, ""):
        with pytest.raises(ValueError, match="no pretrained weights.*refusing to embed with random weights"):
            load_embedder(EmbeddingConfig(backend="open_clip", model="atelier-tiny-vit", pretrained=pretrained))


def test_open_clip_missing_local_weights_fail_clearly():
    with pytest.raises(FileNotFoundError, match="open_clip weights not found"):
        load_embedder(EmbeddingConfig(backend="open_clip", model="ViT-B-32", pretrained="/nonexistent/weights.pt"))


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown embedding backend"):
        load_embedder(EmbeddingConfig(backend="nope"))
