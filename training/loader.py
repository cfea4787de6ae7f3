"""The training step's batches: planned on the step's process, decoded in torch DataLoader workers.

`ShardDataset.plan` (Arrow metadata reads, row draws, bucketing: cheap) runs where the trainer runs and hands each
batch's image bytes and cached text states to the loader workers, which decode, resize and pad them; with CUDA the
batches come back in pinned memory, `prefetch` batches ahead per worker, so the host-to-device copy overlaps the
step. The workers start from a fork server: forking a process that holds CUDA, gloo/NCCL or Ray's gRPC threads is
unsafe. Batches arrive in the plan's order whatever the number of workers (torch's in-order delivery), so a seed
fixes the stream with or without workers.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from training.data import ShardDataset, decode_batch


class _Decode(Dataset):
    """Map-style dataset whose "index" is a planned batch: the DataLoader sends it to a worker that decodes it."""

    def __getitem__(self, raw: dict[str, Any]) -> dict[str, Any]:
        return decode_batch(raw)

    def __len__(self) -> int:  # never asked for by a DataLoader driven by an iterable sampler
        raise TypeError("the planned-batch stream has no length")


class _Plan:
    """The planned batches as a DataLoader sampler (an iterable of indices)."""

    def __init__(self, dataset: ShardDataset, skip: int) -> None:
        self.dataset, self.skip = dataset, skip

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.dataset.plan(self.skip)


def _identity(batch: dict[str, Any]) -> dict[str, Any]:
    return batch


def batch_loader(dataset: ShardDataset, *, skip: int = 0, workers: int = 0, pin_memory: bool = False,
                 prefetch: int = 2) -> Iterable[dict[str, Any]]:
    """Decoded batches of `dataset` (see `decode_batch`), the first `skip` left out.

    Args:
        dataset: the rank's shard dataset.
        skip: batches already trained on (a resumed stage); they are drawn but never read or decoded.
        workers: DataLoader worker processes that decode; 0 decodes on the calling thread.
        pin_memory: return page-locked tensors (CUDA training: lets `.to(device, non_blocking=True)` overlap).
        prefetch: batches each worker decodes ahead.
    """
    if workers <= 0:
        batches = (decode_batch(raw) for raw in dataset.plan(skip))
        if not pin_memory:
            return batches
        return (_pin(b) for b in batches)
    return DataLoader(_Decode(), sampler=_Plan(dataset, skip), batch_size=None, collate_fn=_identity,
                      num_workers=workers, pin_memory=pin_memory, prefetch_factor=prefetch,
                      multiprocessing_context="forkserver")


def _pin(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
