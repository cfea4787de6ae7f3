"""Latent space (optional): a diffusers AutoencoderKL from a local directory, and per-shard latent caches.

`diffusers` is imported lazily, only when `space='latent'` is asked for. A shard's latents are computed once and
saved beside it (or in `cache_dir`) as `<shard name>.latents-<sha of the shard bytes, 16 hex>-<WxH>.pt`:
a dict sample_id -> float16 tensor [C, h, w], read back with `torch.load(..., weights_only=True)`. A changed shard
has a different sha, so a stale cache is never used.

Caches are always local files: a shard given as a URI (object storage) is read through its filesystem, and its cache
goes to `cache_dir` or, when none is given, to `DEFAULT_URI_CACHE_DIR` on the training node (`<tmp>/atelier-latents`,
shared by the node's runs; the sha in each name keeps shards of the same file name apart).
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import torch

from training.data import is_uri, open_shard

log = logging.getLogger(__name__)

DEFAULT_URI_CACHE_DIR = Path(tempfile.gettempdir()) / "atelier-latents"
"""Latent caches of URI shards when no `cache_dir` is given (a local directory of the training node)."""


class LatentCodec(Protocol):
    """Images [B, 3, H, W] in [-1, 1] <-> latents [B, C, H/f, W/f] (already scaled for diffusion)."""

    channels: int
    factor: int

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Latents of images."""

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Images of latents."""


class DiffusersVAE:
    """diffusers `AutoencoderKL` from a local directory; latents are (mean - shift) * scaling_factor."""

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"VAE directory not found: {path} (give a local diffusers AutoencoderKL dir)")
        try:
            from diffusers import AutoencoderKL
        except ImportError as exc:
            raise ImportError("space='latent' needs the `diffusers` package, which is not installed "
                              f"(pip install diffusers), to load the VAE at {path}; or train with space='pixel'"
                              ) from exc
        self.device = torch.device(device)
        self.vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval().requires_grad_(False)
        self.vae.to(self.device)
        config = self.vae.config
        self.channels = int(config.latent_channels)
        self.factor = 2 ** (len(config.block_out_channels) - 1)
        self.scale = float(getattr(config, "scaling_factor", 1.0) or 1.0)
        self.shift = float(getattr(config, "shift_factor", 0.0) or 0.0)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        dist = self.vae.encode(images.to(self.device)).latent_dist
        return (dist.mean - self.shift) * self.scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(latents.to(self.device) / self.scale + self.shift).sample.clamp(-1, 1)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes (a local file or a URI)."""
    digest = hashlib.sha256()
    with open_shard(path) as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


class LatentCache:
    """Latents of the samples of each shard, computed once per (shard content, size) and stored beside the shard
    (local shards), in `cache_dir`, or in `DEFAULT_URI_CACHE_DIR` (URI shards without a `cache_dir`).

    `build` encodes every shard once and writes the cache files; `for_batch` returns a batch's latents from the
    loaded caches (per-shard files are loaded the first time a size is used) and encodes any sample still missing.
    """

    def __init__(self, codec: LatentCodec, shard_paths: list[str], cache_dir: str | os.PathLike | None = None,
                 batch_size: int = 16) -> None:
        self.codec = codec
        self.shard_paths = list(shard_paths)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self._latents: dict[tuple[str, str], torch.Tensor] = {}  # (sample_id, "WxH") -> [C, h, w]
        self._loaded: set[str] = set()
        self._sha: dict[str, str] = {}  # shard -> sha256 of its bytes (a URI shard is read once, not per lookup)
        if self.cache_dir is None and any(is_uri(s) for s in self.shard_paths):
            log.info("latents of URI shards are cached locally in %s (set latent_cache_dir to choose)",
                     DEFAULT_URI_CACHE_DIR)

    def _shard_sha(self, shard: str) -> str:
        if shard not in self._sha:
            self._sha[shard] = file_sha256(shard)
        return self._sha[shard]

    def _base(self, shard: str) -> Path:
        if self.cache_dir is not None:
            return self.cache_dir
        return DEFAULT_URI_CACHE_DIR if is_uri(shard) else Path(shard).parent

    def _stem(self, shard: str) -> str:
        name = posixpath.basename(str(shard).rstrip("/")) if is_uri(shard) else Path(shard).name
        return f"{name}.latents-{self._shard_sha(shard)[:16]}"

    def cache_path(self, shard: str, size: str) -> Path:
        """Where the latents of `shard` at size 'WxH' live."""
        return self._base(shard) / f"{self._stem(shard)}-{size}.pt"

    def build(self, dataset_factory: Callable[[str], Iterable[dict]]) -> None:
        """Encode every sample of every shard (one pass of `dataset_factory(shard)` batches) and save the caches.

        Args:
            dataset_factory: shard path -> iterable of batches (dict with `images`, `sample_ids`, `bucket`), one pass
                in order (e.g. `ShardDataset(shard, ..., shuffle=False, epochs=1)`).
        """
        for shard in self.shard_paths:
            if any(self._base(shard).glob(f"{self._stem(shard)}-*")):
                continue
            per_size: dict[str, dict[str, torch.Tensor]] = {}
            for batch in dataset_factory(shard):
                latents = self.codec.encode(batch["images"]).to("cpu", torch.float16)
                for sid, lat in zip(batch["sample_ids"], latents, strict=True):
                    per_size.setdefault(batch["bucket"], {})[sid] = lat.clone()
            for size, table in per_size.items():
                path = self.cache_path(shard, size)
                if path.exists():
                    continue
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".pt.tmp")
                torch.save(table, tmp)
                os.replace(tmp, path)
                log.info("cached %d latents of %s at %s", len(table), shard, size)

    def load(self, size: str) -> None:
        """Load every shard's cache file at size 'WxH' that exists."""
        if size in self._loaded:
            return
        for shard in self.shard_paths:
            path = self.cache_path(shard, size)
            if path.exists():
                table = torch.load(path, weights_only=True)
                self._latents.update({(sid, size): lat for sid, lat in table.items()})
        self._loaded.add(size)

    def for_batch(self, batch: dict) -> torch.Tensor:
        """Latents [B, C, h, w] (float32) of a batch; samples missing from the cache are encoded on the fly."""
        size = batch["bucket"]
        self.load(size)
        ids = batch["sample_ids"]
        missing = [i for i, sid in enumerate(ids) if (sid, size) not in self._latents]
        if missing:
            fresh = self.codec.encode(batch["images"][missing]).to("cpu", torch.float16)
            for j, i in enumerate(missing):
                self._latents[(ids[i], size)] = fresh[j]
        return torch.stack([self._latents[(sid, size)] for sid in ids]).float()
