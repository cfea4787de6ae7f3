"""Cached text-encoder states: each prompt variant of a shard encoded once, reused by every step, stage and rerun.

The frozen text encoder (Qwen3-VL-8B over 256 tokens at production: ~2.6x the XL step at 256 px) would otherwise
run on every step for prompts it has seen before. Per shard, one file holds `{prompt text: float16 states [L, D]}`
for every text the loader can draw from that shard (each enabled variant of each row, after the empty-caption
fallback). Its name (`text-states-<hash>.pt`) is a hash of the encoder and its settings (name, fused layers, max
length, width) and of those texts, not of the shard's name or bytes: in a shared `cache_dir`, another shard file with
the same captions (a re-shard, a stage's shards grouping the same samples) finds it; a changed caption or another
encoder does not.

Files live beside each local shard, in `cache_dir`, or under `<tmp>/atelier-text-states` for URI shards (as the
latent cache does). They are written to a temporary name and renamed: ranks that build the same file race safely.
Storage at production scale: L x D x 2 bytes per distinct text (a 100-token caption through a 4096-d encoder is
0.8 MB), so a cache is sized like the image shards themselves; the set of variants is the prompt distribution's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from training.config import PROMPT_VARIANTS
from training.data import META_COLUMNS, choose_prompt, is_uri, read_shard

log = logging.getLogger(__name__)

DEFAULT_URI_CACHE_DIR = Path(tempfile.gettempdir()) / "atelier-text-states"
TEXT_CACHE_VERSION = 1
"""Bumped whenever what a cache file holds changes."""


def encoder_key(encoder: Any, layers: Sequence[int], max_length: int) -> dict[str, Any]:
    """What the states depend on besides the text: the encoder's name and settings."""
    return {"encoder": getattr(encoder, "name", type(encoder).__name__), "layers": list(layers),
            "max_length": int(max_length), "dim": int(encoder.dim), "version": TEXT_CACHE_VERSION}


def shard_texts(path: str, variants: Sequence[str]) -> list[str]:
    """Every distinct prompt the loader can draw from a shard with these variants (sorted)."""
    meta = read_shard(path, columns=META_COLUMNS).to_pydict()
    texts = set()
    for row in range(len(meta["sample_id"])):
        captions = {v: meta[f"caption_{v}"][row] for v in PROMPT_VARIANTS}
        texts.update(choose_prompt(captions, v) for v in variants)
    return sorted(texts)


class TextStateCache:
    """Per-shard files of encoded prompts (see the module docstring).

    Args:
        encoder: a `training.text` encoder (`encode(prompts) -> (states, mask)`, `dim`, `name`).
        key: `encoder_key(...)` of that encoder.
        variants: the prompt variants the loader draws (those with a positive probability).
        cache_dir: where the files go; None = beside local shards, `DEFAULT_URI_CACHE_DIR` for URIs.
        batch_size: prompts per encoder call while building.
    """

    def __init__(self, encoder: Any, key: dict[str, Any], variants: Sequence[str],
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 64) -> None:
        self.encoder = encoder
        self.key = json.dumps(key, sort_keys=True)
        self.variants = tuple(variants)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.batch_size = batch_size
        self._paths: dict[str, Path] = {}
        self.built = self.reused = 0

    def path(self, shard: str, texts: Sequence[str] | None = None) -> Path:
        """The cache file of a shard (its texts are read from the shard unless given)."""
        if shard not in self._paths:
            texts = shard_texts(shard, self.variants) if texts is None else texts
            digest = hashlib.sha256(self.key.encode())
            for text in texts:
                digest.update(text.encode())
                digest.update(b"\0")
            base = self.cache_dir or (DEFAULT_URI_CACHE_DIR if is_uri(shard) else Path(shard).parent)
            self._paths[shard] = base / f"text-states-{digest.hexdigest()[:24]}.pt"
        return self._paths[shard]

    def build(self, shards: Sequence[str]) -> None:
        """Encode the texts of every shard whose cache file is missing and write it."""
        for shard in shards:
            texts = shard_texts(shard, self.variants)
            path = self.path(shard, texts)
            if path.exists():
                self.reused += 1
                continue
            table: dict[str, torch.Tensor] = {}
            for i in range(0, len(texts), self.batch_size):
                chunk = texts[i:i + self.batch_size]
                states, mask = self.encoder.encode(chunk)
                lengths = mask.sum(1).tolist()
                for text, s, n in zip(chunk, states, lengths, strict=True):
                    table[text] = s[:n].to("cpu", torch.float16).clone()
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            torch.save(table, tmp)
            os.replace(tmp, path)
            self.built += 1
            log.info("cached the text states of %d prompts of %s in %s", len(table), shard, path)

    def load(self, shard: str) -> dict[str, torch.Tensor]:
        """{prompt: states [L, D] float16} of a shard (its file must have been built)."""
        path = self.path(shard)
        if not path.exists():
            raise FileNotFoundError(f"no text state cache for {shard} at {path}: build() it first")
        return torch.load(path, weights_only=True)
