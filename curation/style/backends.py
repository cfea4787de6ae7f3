"""Production style backends from local weights: a CLIP ViT image tower (`clip`) and CSD (`csd`).

Nothing is downloaded and nothing falls back: a missing or unreadable `weights` path, a checkpoint that does not fill
the architecture, or open_clip without pretrained weights is an error naming the backend and the path. Every
descriptor name carries a short hash of the weights (`weights_id`), so descriptors of different weights never share
an index (`curation.style.descriptor.descriptor_name`).

- `clip`: a CLIP ViT image tower, either open_clip (a directory holding `open_clip_config.json` and its checkpoint,
  or a checkpoint file plus the open_clip architecture name in `StyleConfig.model`) or a transformers
  `CLIPVisionModel` directory (`config.json` + weights; a full `CLIPModel` directory works too). The descriptor is
  the same Gram/channel statistics as the bundled CNN's (`StyleProjector`), of the patch tokens (the class token left
  out) of two intermediate blocks, at a third and two thirds of the depth (8 and 16 of ViT-L/14's 24), each token
  standardised over its channels first (a parameter-free layer norm: CLIP's residual stream has a few channels of
  huge magnitude that would otherwise fill every statistic). Why not the projected embedding: CLIP's image embedding
  is trained to match captions, which name what is depicted, so it ranks by content first (Wang et al. and the CSD
  paper both find CLIP features conflate style with content); token statistics throw the spatial layout away, as
  Gatys et al. do, and mid-depth blocks still hold texture, palette and stroke. The projected embedding is returned
  as the content embedding.
- `csd`: CSD (Somepalli et al. 2024, github learn2phoenix/CSD): an OpenAI-CLIP ViT backbone (QuickGELU, heads =
  width / 64 as OpenAI's `build_model` sets them) whose projection is replaced by a style head and a content head.
  Its checkpoint is a torch state dict (`{"model_state_dict": ...}`, keys possibly prefixed `module.`) with
  `backbone.*`, `last_layer_style` [width, d] and `last_layer_content`; the architecture is read from the tensor
  shapes. The descriptor is the L2-normalised style head output (d = 768 for ViT-L), exactly CSD's `style_output`;
  `StyleConfig.dim` does not apply.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

from curation.image_io import to_rgb
from curation.style.descriptor import StyleConfig, StyleProjector, descriptor_name, l2_rows

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
WEIGHT_SUFFIXES = (".json", ".safetensors", ".bin", ".pth", ".pt", ".ckpt")
"""Files of a weights directory that make up its identity (configs and tensors)."""

_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, cached per (real path, size, mtime) for the process (a ViT-L checkpoint takes seconds)."""
    st = path.stat()
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def weights_files(config: StyleConfig) -> list[Path]:
    """The files the configured weights consist of (a file, or a directory's config and tensor files).

    Raises:
        ValueError: no `weights` configured for a backend that needs them.
        FileNotFoundError: the path does not exist or holds no weight files.
    """
    if not config.weights:
        raise ValueError(f"style backend {config.backend!r} needs local weights (style_embeddings.weights): none "
                         "given; refusing to compute descriptors with random weights")
    path = Path(config.weights)
    if not path.exists():
        raise FileNotFoundError(f"style backend {config.backend!r}: weights not found: {path}")
    if path.is_file():
        return [path]
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
    if not any(p.suffix != ".json" for p in files):
        kinds = ", ".join(WEIGHT_SUFFIXES[1:])
        raise FileNotFoundError(f"style backend {config.backend!r}: no weight files ({kinds}) in {path}")
    return files


def weights_id(config: StyleConfig) -> str:
    """12 hex digits identifying the weights (contents, and the architecture name a checkpoint file is read with).

    Raises:
        ValueError, FileNotFoundError: as `weights_files`, or an unreadable file (named).
    """
    files = weights_files(config)
    arch = config.model if config.backend == "clip" and Path(config.weights).is_file() else ""
    h = hashlib.sha256(f"{config.backend}\n{arch}\n".encode())
    for f in files:
        try:
            h.update(f"{f.name}\n{_file_digest(f)}\n".encode())
        except OSError as exc:
            raise ValueError(f"style backend {config.backend!r}: cannot read weights {f}: {exc}") from exc
    return h.hexdigest()[:12]


def clip_style_blocks(layers: int) -> list[int]:
    """The blocks whose outputs the `clip` descriptor summarises: at a third and two thirds of the depth."""
    return sorted({min(layers - 1, layers // 3), min(layers - 1, (2 * layers) // 3)})


def _resize_crop(img: Image.Image, side: int, mean, std) -> np.ndarray:
    """CLIP preprocessing: shorter side to `side` (bicubic), centre crop, normalised CHW float32."""
    w, h = img.size
    scale = side / min(w, h)
    img = img.resize((max(side, round(w * scale)), max(side, round(h * scale))), Image.BICUBIC)
    left, top = (img.width - side) // 2, (img.height - side) // 2
    arr = np.asarray(img.crop((left, top, left + side, top + side)), np.float32) / 255.0
    return ((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)


class _TorchStyleEmbedder:
    """Batching, preprocessing and output conventions shared by the torch backends."""

    dim: int
    content_dim: int

    def __init__(self, config: StyleConfig) -> None:
        import torch

        self.config = config
        self._torch = torch
        torch.set_num_threads(max(1, config.threads))
        self.name = descriptor_name(config)

    def _tensor(self, images: list[Image.Image]):
        return self._torch.from_numpy(np.stack([self._preprocess(to_rgb(img)) for img in images]))

    def _preprocess(self, img: Image.Image) -> np.ndarray:
        raise NotImplementedError

    def _forward(self, x) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def embed(self, images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        """(style descriptors [n, dim], content embeddings [n, content_dim]), both L2-normalised float32."""
        if not images:
            return np.empty((0, self.dim), np.float32), np.empty((0, self.content_dim), np.float32)
        styles, contents = [], []
        for start in range(0, len(images), self.config.batch_size):
            x = self._tensor(images[start:start + self.config.batch_size]).to(self.config.device)
            with self._torch.inference_mode():
                style, content = self._forward(x)
            styles.append(style)
            contents.append(content)
        return np.concatenate(styles), np.concatenate(contents)


class ClipStyleEmbedder(_TorchStyleEmbedder):
    """Gram/channel statistics of a CLIP ViT's intermediate patch tokens (open_clip or transformers weights)."""

    def __init__(self, config: StyleConfig) -> None:
        super().__init__(config)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        path = Path(config.weights)
        if path.is_dir() and (path / "config.json").is_file() and not (path / "open_clip_config.json").is_file():
            self._load_transformers(path)
        else:
            self._load_open_clip(path)
        self.blocks = clip_style_blocks(self.layers)
        self.projector = StyleProjector((self.width,) * len(self.blocks), config)
        self.dim = config.dim

    def _load_open_clip(self, path: Path) -> None:
        import open_clip

        cfg = self.config
        if path.is_dir():
            if not (path / "open_clip_config.json").is_file():
                raise ValueError(f"style backend 'clip': {path} is neither an open_clip directory "
                                 "(open_clip_config.json) nor a transformers one (config.json)")
            name, pretrained = f"local-dir:{path}", None
        elif not cfg.model:
            raise ValueError(f"style backend 'clip': the checkpoint file {path} needs its open_clip architecture "
                             "(style_embeddings.model, e.g. 'ViT-L-14-quickgelu' for OpenAI weights)")
        else:
            name, pretrained = cfg.model, str(path)
        try:
            # require_pretrained: open_clip would otherwise build random weights and only log it
            model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained,
                                                                         require_pretrained=True)
        except Exception as exc:
            raise ValueError(f"style backend 'clip': cannot load open_clip {name!r} from {path}: "
                             f"{type(exc).__name__}: {exc}") from exc
        self._visual = model.visual.eval().to(cfg.device)
        self._open_clip_preprocess = preprocess
        self._hf = False
        self.layers = len(self._visual.transformer.resblocks)
        self.width = int(self._visual.conv1.weight.shape[0])
        self.content_dim = int(self._visual.output_dim)

    def _load_transformers(self, path: Path) -> None:
        from transformers import CLIPVisionModel

        try:
            model, info = CLIPVisionModel.from_pretrained(str(path), local_files_only=True, output_loading_info=True)
        except Exception as exc:
            raise ValueError(f"style backend 'clip': cannot load a transformers CLIPVisionModel from {path}: "
                             f"{type(exc).__name__}: {exc}") from exc
        missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
        if missing or info.get("mismatched_keys"):
            raise ValueError(f"style backend 'clip': {path} does not hold the whole vision tower (missing "
                             f"{missing[:5]}, mismatched {list(info.get('mismatched_keys', []))[:5]}): refusing "
                             "to run partly random weights")
        self._visual = model.eval().to(self.config.device)
        self._hf = True
        vc = model.config
        self.layers, self.width, self.content_dim = vc.num_hidden_layers, vc.hidden_size, vc.hidden_size
        mean, std = OPENAI_MEAN, OPENAI_STD
        pre = path / "preprocessor_config.json"
        if pre.is_file():
            spec = json.loads(pre.read_text())
            mean, std = tuple(spec.get("image_mean", mean)), tuple(spec.get("image_std", std))
        self._hf_pre = (int(vc.image_size), mean, std)

    def _preprocess(self, img: Image.Image) -> np.ndarray:
        if self._hf:
            return _resize_crop(img, *self._hf_pre)
        return self._open_clip_preprocess(img).numpy()

    def _forward(self, x) -> tuple[np.ndarray, np.ndarray]:
        functional = self._torch.nn.functional
        if self._hf:
            out = self._visual(pixel_values=x, output_hidden_states=True)
            tokens = [out.hidden_states[b + 1][:, 1:] for b in self.blocks]
            content = out.pooler_output
        else:
            out = self._visual.forward_intermediates(x, indices=self.blocks, output_fmt="NLC")
            tokens, content = out["image_intermediates"], out["image_features"]
        layers = [functional.layer_norm(t.float(), (t.shape[-1],)).cpu().numpy()[:, None] for t in tokens]
        style = self.projector.project(self.projector.statistics(layers))
        return style, l2_rows(content.float().cpu().numpy())


def _csd_state_dict(path: Path) -> dict:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # tensors only (weights_only); CSD's training script may store its argparse namespace alongside
            with torch.serialization.safe_globals([argparse.Namespace]):
                state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError for anything but tensors: a refusal either way
        raise ValueError(f"style backend 'csd': cannot read the checkpoint {path} as a state dict: "
                         f"{type(exc).__name__}: {exc}") from exc
    for key in ("model_state_dict", "state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"style backend 'csd': {path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


class CsdStyleEmbedder(_TorchStyleEmbedder):
    """CSD: an OpenAI-CLIP ViT backbone and its style head; descriptor = the L2-normalised style head output."""

    def __init__(self, config: StyleConfig) -> None:
        from open_clip.transformer import QuickGELU, VisionTransformer

        super().__init__(config)
        path = Path(config.weights)
        state = _csd_state_dict(path)
        needed = ["backbone.conv1.weight", "backbone.positional_embedding", "last_layer_style",
                  "backbone.transformer.resblocks.0.mlp.c_fc.weight"]
        absent = [k for k in needed if k not in state]
        if absent:
            raise ValueError(f"style backend 'csd': {path} is not a CSD checkpoint (no {absent})")
        conv = state["backbone.conv1.weight"]
        width, patch = int(conv.shape[0]), int(conv.shape[-1])
        grid = math.isqrt(int(state["backbone.positional_embedding"].shape[0]) - 1)
        layers = 1 + max(int(k.split(".")[3]) for k in state if k.startswith("backbone.transformer.resblocks."))
        mlp_ratio = state["backbone.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width
        style_head = state["last_layer_style"].float()
        visual = VisionTransformer(image_size=grid * patch, patch_size=patch, width=width, layers=layers,
                                   heads=max(1, width // 64), mlp_ratio=mlp_ratio, output_dim=style_head.shape[1],
                                   act_layer=QuickGELU)
        visual.proj = None  # CSD's backbone ends at ln_post of the class token; the heads project it
        backbone = {k.removeprefix("backbone."): v.float() for k, v in state.items() if k.startswith("backbone.")}
        backbone.pop("proj", None)
        result = visual.load_state_dict(backbone, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise ValueError(f"style backend 'csd': {path} does not fit the ViT it describes (missing "
                             f"{result.missing_keys[:5]}, unexpected {result.unexpected_keys[:5]})")
        self._visual = visual.eval().to(config.device)
        self._style_head = style_head.to(config.device)
        content = state.get("last_layer_content")
        # a 'custom' content head (an MLP) is not needed for style: the backbone feature stands in for content
        self._content_head = content.float().to(config.device) if hasattr(content, "shape") else None
        self.side = grid * patch
        self.dim = int(style_head.shape[1])
        self.content_dim = int(content.shape[1]) if self._content_head is not None else width

    def _preprocess(self, img: Image.Image) -> np.ndarray:
        return _resize_crop(img, self.side, OPENAI_MEAN, OPENAI_STD)

    def _forward(self, x) -> tuple[np.ndarray, np.ndarray]:
        feature = self._visual(x).float()
        style = (feature @ self._style_head).cpu().numpy()
        content = feature @ self._content_head if self._content_head is not None else feature
        return l2_rows(style), l2_rows(content.cpu().numpy())
