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
from collections.abc import Callable, Iterator, Sequence
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

META_COLUMNS = ["sample_id", "bucket", "sample_weight", "caption_tags", "caption_short", "caption_medium",
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


def rank_share(paths: Sequence[str], rank: int, world_size: int) -> tuple[list[str], int, int]:
    """What one data-parallel rank reads: (its shards, row offset, row stride).

    Every `world_size`-th shard of the sorted list, starting at `rank`, with all their rows (offset 0, stride 1).
    With fewer shards than ranks, every rank opens every shard and keeps the rows whose index is `rank` modulo
    `world_size`, so that the ranks' shares stay disjoint (each sample once per epoch across ranks) and none is idle.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    paths = sorted(paths)
    if not paths:
        raise ValueError("no shards to split")
    if len(paths) < world_size:
        log.info("%d shards for %d ranks: each rank reads every %d-th row of every shard", len(paths), world_size,
                 world_size)
        return paths, rank, world_size
    return paths[rank::world_size], 0, 1


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


def pad_text_states(states: Sequence[torch.Tensor], dim: int) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Per-prompt token states [L_i, dim] -> (states [B, L, dim] float32, mask [B, L] bool, any padding)."""
    length = max((s.shape[0] for s in states), default=0)
    out = torch.zeros(len(states), length, dim)
    mask = torch.zeros(len(states), length, dtype=torch.bool)
    for i, s in enumerate(states):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask, any(s.shape[0] < length for s in states)


def decode_batch(raw: dict[str, Any]) -> dict[str, Any]:
    """A planned batch (`ShardDataset.plan`) -> dict(images [B,3,H,W] in [-1,1], prompts, sample_ids, bucket, and,
    when the plan carries cached text states, text [B,L,D], text_mask [B,L] bool, text_padded)."""
    w, h = raw["size"]
    batch = {"images": torch.stack([decode_image(data, (w, h)) for data in raw["images"]]),
             "prompts": raw["prompts"], "sample_ids": raw["sample_ids"], "bucket": f"{w}x{h}"}
    if raw.get("text") is not None:
        batch["text"], batch["text_mask"], batch["text_padded"] = pad_text_states(raw["text"], raw["text_dim"])
    return batch


class _Shard:
    """One shard's image column and cached text states, each read on first use (a skipped batch reads neither)."""

    def __init__(self, path: str, text_states: Callable[[str], dict[str, torch.Tensor]] | None) -> None:
        self.path = path
        self._images: pa.ChunkedArray | None = None
        self._text_loader = text_states
        self._text: dict[str, torch.Tensor] | None = None

    def image(self, row: int) -> bytes:
        if self._images is None:
            self._images = read_shard(self.path, columns=["image"]).column("image")
        return self._images[row].as_py()

    def text(self, prompt: str) -> torch.Tensor:
        if self._text is None:
            self._text = self._text_loader(self.path)
        try:
            return self._text[prompt]
        except KeyError as exc:
            raise KeyError(f"text state cache of {self.path} lacks the prompt {prompt!r}: rebuild the cache") from exc


class _Kept:
    """One row's image bytes and text states, taken out of its `_Shard` so that the shard can be freed."""

    def __init__(self, shard: _Shard, row: int, prompt: str) -> None:
        self._image = shard.image(row)
        self._text = shard.text(prompt) if shard._text_loader is not None else None

    def image(self, row: int) -> bytes:
        return self._image

    def text(self, prompt: str) -> torch.Tensor:
        return self._text


class ShardDataset:
    """Iterable of same-bucket batches: dict(images [B,3,H,W] in [-1,1], prompts, sample_ids, bucket).

    `plan()` yields the same batches undecoded (image bytes, target size, prompts), so that decoding can run in
    loader workers (`training.loader.batch_loader`) and a resumed run can skip the batches it already trained on
    without reading or decoding their images.

    Args:
        paths_or_dir: shard files and/or directories, local or URIs (see `list_shards`).
        batch_size: rows per batch.
        prompt_length_distribution: probability per prompt variant (`tags`, `short`, `medium`, `long`).
        seed: fixes shard order, row draws and prompt choices.
        weighted: draw rows in proportion to `sample_weight` (with replacement) instead of a permutation; equal
            weights in a shard are a permutation either way (every row once per epoch).
        shuffle: shuffle shards and rows; False reads shards and rows in order (weights then ignored).
        epochs: passes over the shards; None = forever.
        stage_size: rescale each bucket to an area of about stage_size² (0 = keep the shard's size).
        multiple: output sides are multiples of this (patch size x VAE factor).
        drop_last: drop each bucket's incomplete batch at the end of the last epoch.
        rank: this data-parallel rank; it reads only its share (`rank_share`).
        world_size: number of data-parallel ranks.
        text_states: shard path -> {prompt: token states [L, D]} (a `TextStateCache.load`); the plan then carries
            each prompt's states and `decode_batch` pads them.
        text_dim: width of those states.
    """

    def __init__(self, paths_or_dir: str | os.PathLike | Sequence[str | os.PathLike], batch_size: int,
                 prompt_length_distribution: dict[str, float] | None = None, seed: int = 0, weighted: bool = True,
                 shuffle: bool = True, epochs: int | None = None, stage_size: int = 0, multiple: int = 1,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1,
                 text_states: Callable[[str], dict[str, torch.Tensor]] | None = None, text_dim: int = 0) -> None:
        self.paths, self.row_offset, self.row_stride = rank_share(list_shards(paths_or_dir), rank, world_size)
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
        self.text_states = text_states
        self.text_dim = text_dim

    def _rows(self, rng: np.random.Generator, table_meta: dict[str, list[Any]]) -> np.ndarray:
        mine = np.arange(self.row_offset, len(table_meta["sample_id"]), self.row_stride)
        if not self.shuffle:
            return mine
        if not self.weighted:
            return rng.permutation(mine)
        weights = np.nan_to_num(np.asarray(table_meta["sample_weight"], dtype=np.float64)[mine], nan=0.0).clip(min=0)
        if weights.sum() <= 0:
            return np.empty(0, dtype=np.int64)
        if weights.min() == weights.max():  # uniform: a permutation has the same law and visits each row once
            return rng.permutation(mine)
        return rng.choice(mine, size=mine.size, replace=True, p=weights / weights.sum())

    def _raw(self, rows: list[tuple[_Shard, int, str, str]], bucket: str) -> dict[str, Any]:
        w, h = target_size(*parse_bucket(bucket), self.stage_size, self.multiple)
        raw = {"images": [shard.image(row) for shard, row, _, _ in rows], "size": (w, h),
               "prompts": [prompt for _, _, prompt, _ in rows], "sample_ids": [sid for _, _, _, sid in rows],
               "text": None, "text_dim": self.text_dim}
        if self.text_states is not None:
            raw["text"] = [shard.text(prompt) for shard, _, prompt, _ in rows]
        return raw

    def plan(self, skip: int = 0) -> Iterator[dict[str, Any]]:
        """The batches undecoded (see `decode_batch`), after skipping the first `skip` of them.

        Skipped batches are drawn exactly as they would be (same random stream), but their image bytes and text
        states are never read: a resumed run continues the stream where its checkpoint left it.
        """
        pending: dict[str, list[tuple[_Shard, int, str, str]]] = {}
        emitted = 0
        epoch = 0
        while self.epochs is None or epoch < self.epochs:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.paths)) if self.shuffle else np.arange(len(self.paths))
            drawn = 0
            for shard_index in order:
                path = self.paths[int(shard_index)]
                meta = read_shard(path, columns=META_COLUMNS).to_pydict()
                rows = self._rows(rng, meta)
                if rows.size == 0:
                    continue
                drawn += int(rows.size)
                variants = rng.choice(len(self.variants), size=rows.size, p=self.variant_probs)
                shard = _Shard(path, self.text_states)
                for row, variant in zip(rows.tolist(), variants.tolist(), strict=True):
                    captions = {v: meta[f"caption_{v}"][row] for v in PROMPT_VARIANTS}
                    bucket = meta["bucket"][row]
                    pending.setdefault(bucket, []).append(
                        (shard, row, choose_prompt(captions, self.variants[variant]), meta["sample_id"][row]))
                    if len(pending[bucket]) == self.batch_size:
                        rows_of_batch = pending.pop(bucket)
                        emitted += 1
                        if emitted > skip:
                            yield self._raw(rows_of_batch, bucket)
                if emitted >= skip:  # rows left waiting keep their bytes, not the shard's whole image column
                    for bucket, waiting in pending.items():
                        pending[bucket] = [(_Kept(s, r, p), r, p, sid) if s is shard else (s, r, p, sid)
                                           for s, r, p, sid in waiting]
            if drawn == 0:
                raise ValueError(f"no trainable rows in {len(self.paths)} shard(s) (all empty or zero weight)")
            epoch += 1
        if not self.drop_last:
            for bucket in sorted(pending):
                emitted += 1
                if emitted > skip:
                    yield self._raw(pending[bucket], bucket)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for raw in self.plan():
            yield decode_batch(raw)
