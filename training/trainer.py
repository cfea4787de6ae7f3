"""Training of one curriculum stage: rectified flow + iREPA, EMA, AdamW, atomic checkpoints, JSONL metrics.

Objective (convention used everywhere in `training/`): x_t = (1 - t) x_0 + t noise with t ~ logit-normal
(t = 1 is pure noise), target velocity v = noise - x_0, loss_fm = mean ||v_pred - v||². iREPA: the image tokens
after block `repa_depth` go through the convolutional projector and are pulled (negative cosine) towards the
spatially normalised features of a frozen image teacher on the clean image; loss = loss_fm + repa_weight * loss_repa.
Classifier-free guidance dropout masks all text tokens of a sample.

`train` runs in the calling process; `train_loop_per_worker(config_dict)` is the same loop for a Ray Train worker
(or any torchrun-style launcher): if torch.distributed is initialised, each rank reads a disjoint share of the shards
(`training.data.rank_share`), the model is wrapped in DDP (or FSDP2 `fully_shard`, EMA included) when world_size > 1,
and only rank 0 writes files. An optional `on_checkpoint(step)` callback runs on rank 0 right after each checkpoint is
saved (e.g. to upload the stage directory to object storage: `orchestration.train_sync`); this package itself only
reads and writes local files, plus shards given as URIs.

What keeps an accelerator fed: images are decoded in DataLoader workers into pinned memory (`training.loader`); the
text encoder runs once per prompt and stage (`training.text_cache`), not per step; noise and timesteps are drawn on
the device; losses and the gradient norm are summed on the device and read (all-reduced across ranks) once per
metrics line; attention gets no mask when a batch has no padded or dropped text.

Every random draw of a step comes from generators seeded by (seed, rank, step), and the data stream of a rank is a
fixed sequence of batches: a resumed run skips the batches its checkpoint already trained on, so a killed and resumed
stage trains on exactly the batches, noise and times of an uninterrupted one (same world size).

Files in `out_dir` (`training.checkpoint`): `checkpoint.pt` (model, projector, ema, optimizer state dicts, step,
world_size, asdict of both configs; loads with `torch.load(..., weights_only=True)`), `checkpoint.json` (its summary),
`metrics.jsonl` (one line per logged step: the window's mean training losses over all ranks, `world_size`, and
`eval_loss`, the EMA weights' loss on one fixed batch of training images with fixed noise and times; the first line of
a stage also has `eval_loss_initial`), `samples.png` (optional preview grid from the EMA weights).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from training.checkpoint import (
    CHECKPOINT_NAME,
    METRICS_NAME,
    SAMPLES_NAME,
    SUMMARY_NAME,
    full_state,
    load_checkpoint,
    load_optimizer_state,
    models_from_checkpoint,
    optimizer_state,
    save_checkpoint,
    truncate_metrics,
    write_summary,
)
from training.config import ModelConfig, TrainConfig, config_from_dict
from training.data import ShardDataset, list_shards
from training.evaluation import EVAL_IMAGES, EVAL_SEED, eval_loss, fixed_eval_batch
from training.loader import batch_loader
from training.model import DiT, IREPAProjector, count_parameters, irepa_loss
from training.runtime import FixedTexts, PhaseTimer, dist_rank_world, sample_timesteps, step_seed, train_device
from training.teacher import TeacherCache, load_teacher
from training.text import load_text_encoder
from training.text_cache import TextStateCache, encoder_key

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_NAME", "METRICS_NAME", "SAMPLES_NAME", "SUMMARY_NAME", "TrainResult", "eval_loss",
           "fixed_eval_batch", "load_checkpoint", "models_from_checkpoint", "train", "train_loop_per_worker"]


@dataclass(frozen=True)
class TrainResult:
    """What one stage of training produced."""

    steps: int
    """Optimizer step reached (the checkpoint's step)."""
    final_loss: float
    """Mean total loss of the last logged window (NaN if no step ran in this call)."""
    metrics_path: str
    """Path of metrics.jsonl."""
    checkpoint_path: str
    """Path of checkpoint.pt (the next stage's `init_from`)."""
    samples_per_second: float
    """Training throughput of this call over all workers (0 if no step ran)."""
    params: int
    """Parameters of the DiT (projector excluded)."""
    preview_path: str | None = None
    """Path of samples.png, if preview prompts were configured."""
    world_size: int = 1
    """Training processes of this call."""


class TrainModule(nn.Module):
    """The DiT plus its training-only iREPA projector, so that DDP/FSDP see one module."""

    def __init__(self, dit: DiT, projector: IREPAProjector | None) -> None:
        super().__init__()
        self.dit = dit
        self.projector = projector

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        velocity, grid = self.dit(x_t, t, text, mask)
        return velocity, self.projector(grid) if self.projector is not None else None


def _check_same_model(saved: dict[str, Any], model_cfg: ModelConfig, path: str | os.PathLike) -> None:
    current = asdict(model_cfg)
    diff = {k: (saved.get(k), v) for k, v in current.items() if saved.get(k) != v}
    if diff:
        raise ValueError(f"checkpoint {path} was trained with a different ModelConfig: {diff} (saved, current)")


def _param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "offset" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _run(model_cfg: ModelConfig, train_cfg: TrainConfig, shards: Sequence[str] | str, out_dir: str | os.PathLike,
         resume: bool, init_from: str | os.PathLike | None, log_fn: Callable[[str], None],
         on_checkpoint: Callable[[int], None] | None = None, profile: bool = False) -> TrainResult:
    rank, world = dist_rank_world()
    is_main = rank == 0
    # FSDP whenever a process group exists, even of one process (FSDP on 1 device); DDP only with a peer
    sharded = dist.is_available() and dist.is_initialized() and train_cfg.strategy == "fsdp"
    device = train_device(train_cfg)
    out = Path(out_dir)
    ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)  # identical init on every rank

    # Frozen helpers: text encoder (until its states are cached), iREPA teacher, optional VAE.
    text_encoder = load_text_encoder(train_cfg.text_encoder, layers=train_cfg.text_layers,
                                     max_length=train_cfg.text_max_length, dim=model_cfg.text_dim, device=device)
    if text_encoder.dim != model_cfg.text_dim:
        raise ValueError(f"text encoder {train_cfg.text_encoder!r} gives {text_encoder.dim}-d states but "
                         f"ModelConfig.text_dim is {model_cfg.text_dim}")
    text_name = getattr(text_encoder, "name", "?")
    teacher = load_teacher(train_cfg.teacher, device=device) if train_cfg.repa_weight > 0 else None
    if teacher is not None and teacher.dim != model_cfg.repa_teacher_dim:
        raise ValueError(f"iREPA teacher {train_cfg.teacher!r} gives {teacher.dim} channels but "
                         f"ModelConfig.repa_teacher_dim is {model_cfg.repa_teacher_dim}")
    teacher_cache = TeacherCache(teacher) if teacher is not None else None

    all_shards = list_shards(shards)
    codec = latent_cache = None
    factor = 1
    if train_cfg.space == "latent":
        from training.latent import DiffusersVAE

        codec = DiffusersVAE(train_cfg.vae_path, device=device)
        factor = codec.factor
        if codec.channels != model_cfg.in_channels:
            raise ValueError(f"VAE has {codec.channels} latent channels but ModelConfig.in_channels is "
                             f"{model_cfg.in_channels}")
    multiple = model_cfg.patch_size * factor

    def rank_dataset(seed: int, text_states=None) -> ShardDataset:
        return ShardDataset(all_shards, train_cfg.batch_size, train_cfg.prompt_length_distribution, seed=seed,
                            stage_size=train_cfg.stage_size, multiple=multiple, rank=rank, world_size=world,
                            text_states=text_states, text_dim=model_cfg.text_dim)

    probe = rank_dataset(0)
    text_cache = TextStateCache(text_encoder, encoder_key(text_encoder, train_cfg.text_layers,
                                                          train_cfg.text_max_length),
                                probe.variants, train_cfg.text_cache_dir or None)
    text_cache.build(probe.paths)
    if codec is not None:
        from training.latent import LatentCache

        latent_cache = LatentCache(codec, probe.paths, train_cfg.latent_cache_dir or None)
        latent_cache.build(lambda s: ShardDataset(s, train_cfg.batch_size, seed=0, shuffle=False, epochs=1,
                                                  stage_size=train_cfg.stage_size, multiple=multiple))

    # Model, projector, EMA, optimizer; weights from a resumed checkpoint or from the previous stage.
    dit = DiT(model_cfg)
    projector = (IREPAProjector(model_cfg.dim, model_cfg.repa_teacher_dim, model_cfg.repa_hidden)
                 if teacher is not None else None)
    module = TrainModule(dit, projector)
    ema = copy.deepcopy(dit).requires_grad_(False)
    params = count_parameters(dit)
    start_step, optim_state, saved_world = 0, None, world
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_same_model(ckpt["model_config"], model_cfg, ckpt_path)
        start_step, optim_state, saved_world = int(ckpt["step"]), ckpt["optimizer"], int(ckpt.get("world_size", 1))
        if is_main:
            log_fn(f"resuming {ckpt_path} at step {start_step} (written by {saved_world} worker(s))")
    elif init_from:
        ckpt = load_checkpoint(init_from)
        _check_same_model(ckpt["model_config"], model_cfg, init_from)
        if is_main:
            log_fn(f"initialised from {init_from} (its step {ckpt['step']}); new optimizer, step 0")
    else:
        ckpt = None
    if ckpt is not None:
        dit.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        if projector is not None and ckpt.get("projector"):
            projector.load_state_dict(ckpt["projector"])
        del ckpt
    dit.gradient_checkpointing = train_cfg.activation_checkpointing
    module.to(device)
    ema.to(device).eval()

    wrapped: nn.Module = module
    if world > 1 and train_cfg.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    elif sharded:
        from torch.distributed.fsdp import fully_shard

        for m in (dit, ema):  # EMA sharded like the weights it follows: its lerp stays shard-local
            for block in m.blocks:
                fully_shard(block)
            fully_shard(m)
        fully_shard(module)
    optimizer = torch.optim.AdamW(_param_groups(module, train_cfg.weight_decay), lr=train_cfg.lr,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")
    if optim_state is not None:
        load_optimizer_state(module, optimizer, optim_state)
        del optim_state

    def lr_at(step: int) -> float:
        return train_cfg.lr * min(1.0, (step + 1) / max(1, train_cfg.warmup_steps))

    # the rank's batch stream: the same sequence for a given seed, rank and world size, continued after a resume
    stream_seed, skip = train_cfg.seed * 1_000_003 + rank * 7919, start_step
    if saved_world != world:
        stream_seed, skip = stream_seed + start_step, 0
        if is_main:
            log_fn(f"checkpoint written by {saved_world} worker(s), resumed by {world}: a fresh data stream")
    dataset = rank_dataset(stream_seed, text_cache.load)
    use_bf16 = train_cfg.precision == "bf16" and device.type == "cuda"
    if train_cfg.precision == "bf16" and not use_bf16:
        log.warning("precision='bf16' needs CUDA: training in fp32 on %s", device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext

    # The fixed yardstick, from every shard, of a fixed size (not the per-worker batch); under FSDP the weights are
    # sharded, so every rank takes part.
    evaluate = is_main or sharded
    eval_set = None
    if evaluate:
        eval_set = fixed_eval_batch(
            ShardDataset(all_shards, EVAL_IMAGES, train_cfg.prompt_length_distribution, seed=EVAL_SEED,
                         stage_size=train_cfg.stage_size, multiple=multiple),
            text_encoder, latent_cache, device, train_cfg.logit_normal_mean, train_cfg.logit_normal_std)
    preview_texts = FixedTexts(text_encoder, train_cfg.preview_prompts) if train_cfg.preview_prompts else None
    del text_encoder, text_cache.encoder  # every state the stage needs is cached: free the encoder's memory
    if device.type == "cuda":
        torch.cuda.empty_cache()
    def evaluate_ema() -> float:
        value = eval_loss(ema, eval_set, autocast)
        if sharded:  # a root FSDP module keeps its parameters gathered after a forward with no backward
            ema.reshard()
        return value

    initial_eval = evaluate_ema() if evaluate and start_step == 0 else None
    if is_main:
        truncate_metrics(metrics_path, start_step)
        log_fn(f"DiT {params / 1e6:.2f}M params, stage {train_cfg.stage_size}px, steps {start_step}->"
               f"{train_cfg.steps}, world {world} ({train_cfg.strategy if world > 1 or sharded else 'single'}), "
               f"device "
               f"{device}, text {text_name} (states of {text_cache.built} shard(s) encoded, {text_cache.reused} "
               f"cached), teacher {getattr(teacher, 'name', None)}, space {train_cfg.space}, loader workers "
               f"{train_cfg.loader_workers}")

    batches = iter(batch_loader(dataset, skip=skip, workers=train_cfg.loader_workers,
                                pin_memory=device.type == "cuda", prefetch=train_cfg.loader_prefetch))
    device_gen, host_gen = torch.Generator(device=device), torch.Generator()
    phases = PhaseTimer(device, profile)
    sums = torch.zeros(4, device=device)  # loss, loss_fm, loss_repa, grad_norm of the window
    no_norm = torch.full((), math.nan, device=device)
    window_steps, window_samples, window_start = 0, 0, time.perf_counter()
    last_loss = math.nan
    run_samples, run_start, step = 0, time.perf_counter(), start_step
    wrapped.train()
    while step < train_cfg.steps:
        seed = step_seed(train_cfg.seed, rank, step)
        device_gen.manual_seed(seed)
        host_gen.manual_seed(seed + 1)
        phases.start()
        batch = next(batches)
        images = batch["images"].to(device, non_blocking=True)
        x0 = latent_cache.for_batch(batch).to(device) if latent_cache is not None else images
        b = x0.shape[0]
        phases.mark("data")
        text = batch["text"].to(device, non_blocking=True)
        mask = None  # decided on the host (lengths and dropout are known there): no device sync
        drop = torch.rand(b, generator=host_gen) < train_cfg.cfg_dropout if train_cfg.cfg_dropout > 0 else None
        if batch["text_padded"] or (drop is not None and bool(drop.any())):
            host_mask = batch["text_mask"] if drop is None else batch["text_mask"] & ~drop[:, None]
            mask = host_mask.to(device, non_blocking=True)
        phases.mark("text")
        t = sample_timesteps(b, train_cfg.logit_normal_mean, train_cfg.logit_normal_std, device_gen, device)
        noise = torch.randn(x0.shape, generator=device_gen, device=device, dtype=x0.dtype)
        tb = t.view(b, 1, 1, 1)
        x_t = (1 - tb) * x0 + tb * noise
        target = noise - x0
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        with autocast():
            velocity, projected = wrapped(x_t, t, text, mask)
            loss_fm = F.mse_loss(velocity.float(), target.float())
            loss_repa = torch.zeros((), device=device)
            if projected is not None:
                features = teacher_cache(images, batch["sample_ids"])
                loss_repa = irepa_loss(projected, features)
            loss = loss_fm + train_cfg.repa_weight * loss_repa
        phases.mark("forward")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        phases.mark("backward")
        grad_norm = no_norm
        if train_cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), train_cfg.grad_clip)
            if hasattr(grad_norm, "full_tensor"):  # FSDP: a replicated DTensor
                grad_norm = grad_norm.full_tensor()
        optimizer.step()
        phases.mark("optimizer")
        step += 1
        decay = min(train_cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(dit.parameters()), 1 - decay)
        phases.mark("ema")
        sums += torch.stack([loss.detach().float(), loss_fm.detach().float(), loss_repa.detach().float(),
                             grad_norm.detach().float()])
        window_steps += 1
        window_samples += b * world
        run_samples += b * world

        if step % train_cfg.log_every == 0 or step == train_cfg.steps:
            means = sums / window_steps
            if world > 1:  # one collective per metrics line: every rank's losses, not rank 0's alone
                dist.all_reduce(means)
                means /= world
            loss_v, fm_v, repa_v, grad_v = means.tolist()
            elapsed = time.perf_counter() - window_start
            last_loss = loss_v
            record = {"step": step, "loss": loss_v, "loss_fm": fm_v, "loss_repa": repa_v, "grad_norm": grad_v,
                      "lr": lr_at(step - 1), "samples_per_second": window_samples / max(elapsed, 1e-9),
                      "bucket": batch["bucket"], "world_size": world, "time": time.time(),
                      **phases.pop(window_steps)}
            if evaluate:
                record["eval_loss"] = evaluate_ema()
                if initial_eval is not None:  # the stage's starting point, on its first line only
                    record["eval_loss_initial"], initial_eval = initial_eval, None
            if is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                log_fn(f"step {step}/{train_cfg.steps} loss {record['loss']:.4f} (fm {record['loss_fm']:.4f}, "
                       f"repa {record['loss_repa']:.4f}) {record['samples_per_second']:.1f} samples/s")
            sums.zero_()
            window_steps, window_samples, window_start = 0, 0, time.perf_counter()
        if step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
            _save(out, module, ema, optimizer, step, model_cfg, train_cfg, world, is_main, params, sharded)
            if is_main and on_checkpoint is not None:
                on_checkpoint(step)
    run_seconds = time.perf_counter() - run_start
    del batches  # stops the loader workers
    if start_step >= train_cfg.steps and is_main:
        log_fn(f"{ckpt_path} already at step {start_step} >= {train_cfg.steps}: nothing to train")

    preview_path = None
    if preview_texts is not None and (is_main or sharded):
        preview_model = ema
        if sharded:  # gathered on every rank, sampled on rank 0 only
            state = full_state(ema)
            preview_model = DiT(model_cfg).to(device).eval()
            preview_model.load_state_dict(state)
        if is_main:
            from training.sampler import sample, sample_grid_png

            w, h = _preview_size(train_cfg.stage_size, multiple)
            images = sample(preview_model, preview_texts, list(train_cfg.preview_prompts), size=(w, h),
                            steps=train_cfg.preview_steps, cfg_scale=train_cfg.preview_cfg_scale,
                            seed=train_cfg.seed, vae=codec)
            preview_path = str(out / SAMPLES_NAME)
            tmp = out / f".{SAMPLES_NAME}.tmp"
            tmp.write_bytes(sample_grid_png(images))
            os.replace(tmp, preview_path)
    if world > 1:
        dist.barrier()
    return TrainResult(steps=max(step, start_step), final_loss=last_loss, metrics_path=str(metrics_path),
                       checkpoint_path=str(ckpt_path),
                       samples_per_second=run_samples / run_seconds if run_samples else 0.0, params=params,
                       preview_path=preview_path, world_size=world)


def _preview_size(stage_size: int, multiple: int) -> tuple[int, int]:
    side = max(multiple, round(max(stage_size, multiple) / multiple) * multiple)
    return side, side


def _save(out: Path, module: TrainModule, ema: DiT, optimizer: torch.optim.Optimizer, step: int,
          model_cfg: ModelConfig, train_cfg: TrainConfig, world: int, is_main: bool, params: int,
          sharded: bool) -> None:
    if is_main or sharded:  # under FSDP every rank takes part in the gathers; under DDP rank 0 holds it all
        state = {"model": full_state(module.dit), "ema": full_state(ema),
                 "projector": full_state(module.projector) if module.projector is not None else {},
                 "optimizer": optimizer_state(module, optimizer), "step": step,
                 "model_config": asdict(model_cfg), "train_config": asdict(train_cfg), "world_size": world}
        if is_main:
            sha, size = save_checkpoint(out / CHECKPOINT_NAME, state)
            write_summary(out, state, sha, size, params)
    if world > 1:
        dist.barrier()


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, shards: Sequence[str] | str, out_dir: str | os.PathLike,
          *, resume: bool = True, init_from: str | os.PathLike | None = None,
          log: Callable[[str], None] | None = None, on_checkpoint: Callable[[int], None] | None = None,
          profile: bool = False) -> TrainResult:
    """Train (or resume) one curriculum stage in this process (or in each rank of an initialised process group).

    Args:
        model_cfg: the DiT's shape.
        train_cfg: the stage's hyper-parameters.
        shards: Parquet shard files and/or directories of the `training_shards` asset (local paths or URIs).
        out_dir: local directory where checkpoint.pt, metrics.jsonl and samples.png go.
        resume: continue from out_dir/checkpoint.pt if it exists (metrics lines after its step are dropped).
        init_from: the previous stage's checkpoint.pt (model + EMA weights; fresh optimizer; step 0). Ignored when
            resuming from an existing checkpoint.
        log: progress callback (e.g. a Dagster `context.log.info`); default: this module's logger.
        on_checkpoint: called with the step on rank 0 right after each checkpoint.pt (and its metrics lines) is
            written; a copy to remote storage taken then is a consistent resume point.
        profile: time each step's phases (`training.runtime.PHASES`; metrics keys `time_<phase>`), synchronising
            the device at every boundary: for benchmarks, not for production runs.

    Returns:
        The TrainResult of the stage.
    """
    return _run(model_cfg, train_cfg, shards, out_dir, resume, init_from, log or _module_log, on_checkpoint, profile)


def _module_log(message: str) -> None:
    log.info(message)


def train_loop_per_worker(config: dict[str, Any],
                          on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The training loop for a Ray Train (or torchrun) worker; plain data in and out.

    Args:
        config: `model_config` and `train_config` (asdict of the configs), `shards` (list of paths or URIs),
            `out_dir` (a local directory), optional `init_from` (a local checkpoint), `resume` (default True) and
            `profile` (default False).
        on_checkpoint: see `train`; only rank 0 calls it.

    Returns:
        `asdict(TrainResult)` (rank 0's files; other ranks return their own throughput).
    """
    logging.basicConfig(level=logging.INFO)
    model_cfg = config_from_dict(ModelConfig, config["model_config"])
    train_cfg = config_from_dict(TrainConfig, config["train_config"])
    result = _run(model_cfg, train_cfg, config["shards"], config["out_dir"], config.get("resume", True),
                  config.get("init_from"), _module_log, on_checkpoint, config.get("profile", False))
    return asdict(result)
