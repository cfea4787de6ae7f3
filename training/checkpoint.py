"""A stage's files: `checkpoint.pt`, its summary `checkpoint.json`, and `metrics.jsonl` upkeep.

`checkpoint.pt` holds full (unsharded) CPU state dicts, whatever wrote it: rank 0 of a DDP run, or every rank of an
FSDP run gathering its shards. The optimizer state is keyed by parameter name (torch.distributed.checkpoint's
full-state-dict form) so that a checkpoint of 1 worker, of N DDP workers or of N FSDP workers resumes under any of
them. `checkpoint.json`, written after it, is what a reader needs without downloading gigabytes: the step, both
configs' hashes, the parameter count and the SHA-256 and size of `checkpoint.pt` (hashed while it is written).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.config import ModelConfig, TrainConfig, config_from_dict
from training.model import DiT

CHECKPOINT_NAME = "checkpoint.pt"
SUMMARY_NAME = "checkpoint.json"
METRICS_NAME = "metrics.jsonl"
SAMPLES_NAME = "samples.png"


def config_hash(config: ModelConfig | TrainConfig | dict[str, Any]) -> str:
    """16 hex digits of the SHA-256 of a config's `asdict` (JSON, sorted keys)."""
    data = config if isinstance(config, dict) else asdict(config)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=list).encode()).hexdigest()[:16]


class _HashingFile:
    """A binary file that hashes what is written to it (so a large checkpoint is never read back to hash it)."""

    def __init__(self, f) -> None:
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> tuple[str, int]:
    """torch.save to a temporary file, then an atomic rename; returns (SHA-256 hex, bytes) of the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        hashed = _HashingFile(f)
        torch.save(state, hashed)
    os.replace(tmp, path)
    return hashed.sha.hexdigest(), hashed.size


def file_sha256(path: str | os.PathLike, chunk: int = 8 << 20) -> str:
    """Hex SHA-256 of a local file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by `train` (safe loading: tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def write_summary(directory: str | os.PathLike, state: dict[str, Any], sha256: str, size: int,
                  params: int) -> dict[str, Any]:
    """Write `checkpoint.json` beside a just-saved checkpoint (atomically) and return it."""
    summary = {"step": int(state["step"]), "model_config_hash": config_hash(state["model_config"]),
               "train_config_hash": config_hash(state["train_config"]), "params": int(params),
               "sha256": sha256, "bytes": int(size), "world_size": int(state.get("world_size", 1))}
    path = Path(directory) / SUMMARY_NAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(summary, sort_keys=True))
    os.replace(tmp, path)
    return summary


def models_from_checkpoint(path: str | os.PathLike, use_ema: bool = True) -> tuple[DiT, ModelConfig, TrainConfig]:
    """Rebuild the DiT (EMA weights by default) and both configs from a checkpoint, for sampling or evaluation."""
    ckpt = load_checkpoint(path)
    model_cfg = config_from_dict(ModelConfig, ckpt["model_config"])
    train_cfg = config_from_dict(TrainConfig, ckpt["train_config"])
    model = DiT(model_cfg)
    model.load_state_dict(ckpt["ema" if use_ema else "model"])
    return model.eval(), model_cfg, train_cfg


def truncate_metrics(path: str | os.PathLike, step: int) -> None:
    """Drop metrics lines with step > `step` (a resumed run rewrites them), atomically."""
    path = Path(path)
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


def full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU state dict; sharded (DTensor) entries are gathered (a collective under FSDP: every rank calls it)."""
    out = {}
    for k, v in module.state_dict().items():
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        out[k] = v.detach().cpu()
    return out


def optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer's full state keyed by parameter name (gathered under FSDP; a collective there)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(module, optimizer,
                                    options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def load_optimizer_state(module: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Load a state from `optimizer_state` into a plain, DDP or FSDP run (each rank passes the full state).

    Checkpoints written before the state was keyed by name (integer keys) load into a plain or DDP optimizer.
    """
    if all(isinstance(k, int) for k in state.get("state", {})):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))
