"""Streams the `training_shards` Parquet files into same-bucket batches.

Shard schema: `sample_id`, `source_uri`, `license`, `bucket` ("WxH"), `width`, `height`, `image` (PNG/JPEG bytes),
`caption_tags`, `caption_short`, `caption_medium`, `caption_long` (may be empty), `sample_weight`.

Order of one epoch (all from one `numpy` generator seeded with `seed + epoch`, so a seed fixes everything):
shards are visited in a shuffled order, one shard in memory at a time; within a shard, rows are drawn with
replacement in proportion to `sample_weight` (weights are relative within a shard; shards are random mixtures) or,
unweighted, as a permutation; rows are grouped per bucket and emitted as soon as a bucket has `batch_size` rows
(leftovers carry over to the next shard). Each sample's prompt variant is drawn from `prompt_length_distribution`;
an empty caption falls back to the next variant in tags -> short -> medium -> long -> tags order.

Shards are local paths or URIs of any filesystem pyarrow opens (`s3://`, `gs://`, `file://`, ...; fsspec for the
schemes pyarrow lacks): a URI is read through `pyarrow.fs.FileSystem.from_uri`, one filesystem per directory.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import posixpath
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image

from training.config import PROMPT_VARIANTS

log = logging.getLogger(__name__)

_META_COLUMNS = ["sample_id", "bucket", "sample_weight", "caption_tags", "caption_short", "caption_medium",
                 "caption_long"]


def is_uri(path: str | os.PathLike) -> bool:
    """True for a URI (`scheme://...`), False for a local path."""
    return "://" in str(path)


@functools.lru_cache(maxsize=64)
def _uri_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def resolve_uri(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) of a URI; the filesystem is built once per directory and reused."""
    uri = uri.rstrip("/")
    head, _, name = uri.rpartition("/")
    if len(head) <= uri.index("://") + 3:  # a bucket or filesystem root: no directory to share
        return _uri_filesystem(uri)
    fs, base = _uri_filesystem(head)
    return fs, posixpath.join(base, name)


def open_shard(path: str | os.PathLike) -> IO[bytes]:
    """A shard's bytes as a binary stream (a local file or a URI)."""
    if is_uri(path):
        fs, inner = resolve_uri(str(path))
        return fs.open_input_stream(inner)
    return open(path, "rb")


def read_shard(path: str, columns: list[str] | None = None) -> pa.Table:
    """Columns of one shard (a local file or a URI)."""
    if is_uri(path):
        fs, inner = resolve_uri(path)
        return pq.read_table(inner, columns=columns, filesystem=fs)
    return pq.read_table(path, columns=columns)


def _list_uri(item: str) -> list[str]:
    fs, inner = resolve_uri(item)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        base = item.rstrip("/")
        names = sorted(posixpath.basename(i.path) for i in fs.get_file_info(pafs.FileSelector(inner))
                       if i.type == pafs.FileType.File)
        return [f"{base}/{n}" for n in names if n.endswith(".parquet") and not n.startswith(("_", "."))]
    if info.type == pafs.FileType.File:
        return [item]
    raise FileNotFoundError(f"training shard or directory not found: {item}")


def list_shards(paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Parquet shard paths, sorted: a directory's `*.parquet` files (names starting with '_' or '.' ignored), or
    the given files / directories. URIs stay URIs (a directory URI lists its files as URIs)."""
    items = [paths_or_dir] if isinstance(paths_or_dir, (str, os.PathLike)) else list(paths_or_dir)
    out: list[str] = []
    for item in items:
        if is_uri(item):
            out.extend(_list_uri(str(item)))
            continue
        path = Path(item)
        if path.is_dir():
            out.extend(str(p) for p in sorted(path.glob("*.parquet")) if not p.name.startswith(("_", ".")))
        elif path.is_file():
            out.append(str(path))
        else:
            raise FileNotFoundError(f"training shard or directory not found: {path}")
    if not out:
        raise FileNotFoundError(f"no Parquet shards in {paths_or_dir}")
    return sorted(dict.fromkeys(out))


def shard_rank_split(paths: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The shards of one data-parallel rank: every `world_size`-th shard of the sorted list, starting at `rank`.

    With fewer shards than ranks, ranks share shards (rank r reads shard r mod n) so that no rank is idle; their
    batches still differ because each rank seeds its sampler differently.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    paths = sorted(paths)
    if not paths:
        raise ValueError("no shards to split")
    if len(paths) < world_size:
        log.warning("%d shards for %d ranks: ranks share shards", len(paths), world_size)
        return [paths[rank % len(paths)]]
    return paths[rank::world_size]


def parse_bucket(bucket: str) -> tuple[int, int]:
    """'320x192' -> (320, 192) as (width, height)."""
    try:
        w, h = bucket.lower().split("x")
        return int(w), int(h)
    except ValueError as exc:
        raise ValueError(f"bad bucket {bucket!r}; expected 'WxH'") from exc


def target_size(width: int, height: int, stage_size: int, multiple: int) -> tuple[int, int]:
    """Size (w, h) with area about stage_size² and the bucket's aspect ratio, sides multiples of `multiple`.

    `stage_size <= 0` keeps (width, height) (which must then be multiples of `multiple`).
    """
    if stage_size <= 0:
        return width, height
    scale = stage_size / (width * height) ** 0.5
    return (max(multiple, round(width * scale / multiple) * multiple),
            max(multiple, round(height * scale / multiple) * multiple))


def choose_prompt(captions: dict[str, str], variant: str) -> str:
    """The caption of `variant`, or of the nearest non-empty one: shorter ones first, then longer ones.

    An empty `long` (its caption supports no long variant distinct from `medium`) thus trains on `medium`.
    """
    start = PROMPT_VARIANTS.index(variant)
    order = [*range(start, -1, -1), *range(start + 1, len(PROMPT_VARIANTS))]
    for k in order:
        text = captions.get(PROMPT_VARIANTS[k]) or ""
        if text.strip():
            return text
    return ""


def decode_image(data: bytes, size: tuple[int, int]) -> torch.Tensor:
    """PNG/JPEG bytes -> float tensor [3, H, W] in [-1, 1], resized (Lanczos) to size=(w, h) if needed."""
    with Image.open(io.BytesIO(data)) as img:
        img = img.convert("RGB")
        if img.size != size:
            img = img.resize(size, Image.Resampling.LANCZOS)
        array = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1) / 127.5 - 1.0


class ShardDataset:
    """Iterable of same-bucket batches: dict(images [B,3,H,W] in [-1,1], prompts, sample_ids, bucket).

    Args:
        paths_or_dir: shard files and/or directories, local or URIs (see `list_shards`).
        batch_size: rows per batch.
        prompt_length_distribution: probability per prompt variant (`tags`, `short`, `medium`, `long`).
        seed: fixes shard order, row draws and prompt choices.
        weighted: draw rows in proportion to `sample_weight` (with replacement) instead of a permutation.
        shuffle: shuffle shards and rows; False reads shards and rows in order (weights then ignored).
        epochs: passes over the shards; None = forever.
        stage_size: rescale each bucket to an area of about stage_size² (0 = keep the shard's size).
        multiple: output sides are multiples of this (patch size x VAE factor).
        drop_last: drop each bucket's incomplete batch at the end of the last epoch.
    """

    def __init__(self, paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike], batch_size: int,
                 prompt_length_distribution: dict[str, float] | None = None, seed: int = 0, weighted: bool = True,
                 shuffle: bool = True, epochs: int | None = None, stage_size: int = 0, multiple: int = 1,
                 drop_last: bool = False) -> None:
        self.paths = list_shards(paths_or_dir)
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.batch_size = batch_size
        dist = prompt_length_distribution or {"medium": 1.0}
        unknown = set(dist) - set(PROMPT_VARIANTS)
        if unknown:
            raise ValueError(f"unknown prompt variants {sorted(unknown)}")
        self.variants = [v for v in PROMPT_VARIANTS if dist.get(v, 0) > 0]
        probs = np.array([dist[v] for v in self.variants], dtype=np.float64)
        self.variant_probs = probs / probs.sum()
        self.seed = seed
        self.weighted = weighted
        self.shuffle = shuffle
        self.epochs = epochs
        self.stage_size = stage_size
        self.multiple = multiple
        self.drop_last = drop_last

    def _rows(self, rng: np.random.Generator, table_meta: dict[str, list[Any]]) -> np.ndarray:
        n = len(table_meta["sample_id"])
        if not self.shuffle:
            return np.arange(n)
        if not self.weighted:
            return rng.permutation(n)
        weights = np.nan_to_num(np.asarray(table_meta["sample_weight"], dtype=np.float64), nan=0.0).clip(min=0)
        if weights.sum() <= 0:
            return np.empty(0, dtype=np.int64)
        return rng.choice(n, size=n, replace=True, p=weights / weights.sum())

    def _batch(self, rows: list[dict[str, Any]], bucket: str) -> dict[str, Any]:
        w, h = target_size(*parse_bucket(bucket), self.stage_size, self.multiple)
        return {"images": torch.stack([decode_image(r["image"], (w, h)) for r in rows]),
                "prompts": [r["prompt"] for r in rows], "sample_ids": [r["sample_id"] for r in rows],
                "bucket": f"{w}x{h}"}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        pending: dict[str, list[dict[str, Any]]] = {}
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.paths)) if self.shuffle else np.arange(len(self.paths))
            drawn = 0
            for shard_index in order:
                path = self.paths[int(shard_index)]
                meta = read_shard(path, columns=_META_COLUMNS).to_pydict()
                rows = self._rows(rng, meta)
                if rows.size == 0:
                    continue
                drawn += int(rows.size)
                variants = rng.choice(len(self.variants), size=rows.size, p=self.variant_probs)
                images = read_shard(path, columns=["image"]).column("image")
                for row, variant in zip(rows.tolist(), variants.tolist(), strict=True):
                    captions = {v: meta[f"caption_{v}"][row] for v in PROMPT_VARIANTS}
                    bucket = meta["bucket"][row]
                    pending.setdefault(bucket, []).append({
                        "sample_id": meta["sample_id"][row], "image": images[row].as_py(),
                        "prompt": choose_prompt(captions, self.variants[variant])})
                    if len(pending[bucket]) == self.batch_size:
                        yield self._batch(pending.pop(bucket), bucket)
            if drawn == 0:
                raise ValueError(f"no trainable rows in {len(self.paths)} shard(s) (all empty or zero weight)")
            epoch += 1
        if not self.drop_last:
            for bucket in sorted(pending):
                yield self._batch(pending[bucket], bucket)
