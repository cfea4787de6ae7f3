"""Training of one curriculum stage: rectified flow + iREPA, EMA, AdamW, atomic checkpoints, JSONL metrics.

Objective (convention used everywhere in `training/`): x_t = (1 - t) x_0 + t noise with t ~ logit-normal
(t = 1 is pure noise), target velocity v = noise - x_0, loss_fm = mean ||v_pred - v||². iREPA: the image tokens
after block `repa_depth` go through the convolutional projector and are pulled (negative cosine) towards the
spatially normalised features of a frozen image teacher on the clean image; loss = loss_fm + repa_weight * loss_repa.
Classifier-free guidance dropout masks all text tokens of a sample.

`train` runs in the calling process; `train_loop_per_worker(config_dict)` is the same loop for a Ray Train worker
(or any torchrun-style launcher): if torch.distributed is initialised, each rank reads its share of the shards, the
model is wrapped in DDP (or FSDP2 `fully_shard`) when world_size > 1, and only rank 0 writes files. An optional
`on_checkpoint(step)` callback runs on rank 0 right after each checkpoint is saved (e.g. to upload the stage directory
to object storage: `orchestration.train_sync`); this package itself only reads and writes local files, plus shards
given as URIs.

Files in `out_dir`: `checkpoint.pt` (model, projector, ema, optimizer state dicts, step, asdict of both configs;
loads with `torch.load(..., weights_only=True)`), `metrics.jsonl` (one line per logged step: the window's mean
training losses and `eval_loss`, the EMA weights' loss on one fixed batch of training images with fixed noise and
times; the first line of a stage also has `eval_loss_initial`), `samples.png` (optional preview grid from the EMA
weights).
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

from training.config import ModelConfig, TrainConfig, config_from_dict
from training.data import ShardDataset, list_shards, shard_rank_split
from training.model import DiT, IREPAProjector, count_parameters, irepa_loss
from training.teacher import TeacherCache, load_teacher
from training.text import load_text_encoder

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
METRICS_NAME = "metrics.jsonl"
SAMPLES_NAME = "samples.png"


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


class TrainModule(nn.Module):
    """The DiT plus its training-only iREPA projector, so that DDP/FSDP see one module."""

    def __init__(self, dit: DiT, projector: IREPAProjector | None) -> None:
        super().__init__()
        self.dit = dit
        self.projector = projector

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        velocity, grid = self.dit(x_t, t, text, mask)
        return velocity, self.projector(grid) if self.projector is not None else None


def sample_timesteps(n: int, mean: float, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal times in (0, 1): sigmoid(N(mean, std²))."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


EVAL_SEED = 20_261_130
EVAL_TIMES = 4
"""Each held-out image is scored at this many fixed times t (a stratified grid over (0, 1))."""


def fixed_eval_batch(dataset: ShardDataset, text_encoder: Any, latent_cache: Any, device: torch.device,
                     mean: float = 0.0, std: float = 1.0, max_images: int = 32) -> dict[str, torch.Tensor]:
    """One batch with everything random fixed (images, prompts, noise, t), so its loss moves only with the weights.

    The training loss of a window mixes in the luck of its timesteps and images; late in a curriculum stage that noise
    is larger than the progress. This batch is the stage's yardstick (`eval_loss` in metrics.jsonl).
    """
    batch = next(iter(dataset))
    x0 = latent_cache.for_batch(batch) if latent_cache is not None else batch["images"]
    x0 = x0[:max_images]
    text, mask = text_encoder.encode(batch["prompts"][:max_images])
    b = x0.shape[0]
    generator = torch.Generator().manual_seed(EVAL_SEED)
    x0, text, mask = (v.repeat_interleave(EVAL_TIMES, 0) for v in (x0, text, mask))
    # the training distribution's quantiles (logit-normal), not a uniform grid: near t = 0 an x-prediction's error is
    # amplified up to 1 / t_eps and would drown the signal
    quantiles = (torch.arange(b * EVAL_TIMES, dtype=torch.float64) + 0.5) / (b * EVAL_TIMES)
    t = torch.sigmoid(mean + std * torch.special.ndtri(quantiles)).float()
    t = t[torch.randperm(len(t), generator=generator)]
    noise = torch.randn(x0.shape, generator=generator)
    return {k: v.to(device) for k, v in {"x0": x0, "t": t, "noise": noise, "text": text, "mask": mask}.items()}


@torch.no_grad()
def eval_loss(model: nn.Module, batch: dict[str, torch.Tensor], autocast: Callable[[], Any] = nullcontext) -> float:
    """Flow-matching loss of a DiT (the EMA weights in training) on a `fixed_eval_batch`."""
    was_training = model.training
    model.eval()
    tb = batch["t"].view(-1, 1, 1, 1)
    x_t = (1 - tb) * batch["x0"] + tb * batch["noise"]
    with autocast():
        velocity = model(x_t, batch["t"], batch["text"], batch["mask"])[0]
    model.train(was_training)
    return float(F.mse_loss(velocity.float(), (batch["noise"] - batch["x0"]).float()))


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """torch.save to a temporary file, then an atomic rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A checkpoint written by `train` (safe loading: tensors and plain containers only)."""
    return torch.load(path, map_location="cpu", weights_only=True)


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


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(train_cfg: TrainConfig) -> torch.device:
    if train_cfg.use_gpu and torch.cuda.is_available():
        if "LOCAL_RANK" in os.environ and not (dist.is_available() and dist.is_initialized()):
            torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        return torch.device("cuda", torch.cuda.current_device())
    if train_cfg.use_gpu:
        log.warning("use_gpu=True but CUDA is not available: training on CPU")
    return torch.device("cpu")


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


def _full_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU state dict; sharded (DTensor) entries are gathered (a collective under FSDP)."""
    out = {}
    for k, v in module.state_dict().items():
        if hasattr(v, "full_tensor"):
            v = v.full_tensor()
        out[k] = v.detach().cpu()
    return out


class _Windows:
    """Running sums between two metric lines."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.n, self.loss, self.fm, self.repa, self.grad, self.samples, self.start = 0, 0.0, 0.0, 0.0, 0.0, 0, \
            time.perf_counter()

    def add(self, loss: float, fm: float, repa: float, grad: float, samples: int) -> None:
        self.n += 1
        self.loss += loss
        self.fm += fm
        self.repa += repa
        self.grad += grad
        self.samples += samples


def _run(model_cfg: ModelConfig, train_cfg: TrainConfig, shards: Sequence[str] | str, out_dir: str | os.PathLike,
         resume: bool, init_from: str | os.PathLike | None, log_fn: Callable[[str], None],
         on_checkpoint: Callable[[int], None] | None = None) -> TrainResult:
    rank, world = _dist()
    is_main = rank == 0
    device = _device(train_cfg)
    out = Path(out_dir)
    ckpt_path, metrics_path = out / CHECKPOINT_NAME, out / METRICS_NAME
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    if train_cfg.threads > 0:
        torch.set_num_threads(train_cfg.threads)
    torch.manual_seed(train_cfg.seed)  # identical init on every rank

    # Frozen helpers: text encoder, iREPA teacher, optional VAE.
    text_encoder = load_text_encoder(train_cfg.text_encoder, layers=train_cfg.text_layers,
                                     max_length=train_cfg.text_max_length, dim=model_cfg.text_dim, device=device)
    if text_encoder.dim != model_cfg.text_dim:
        raise ValueError(f"text encoder {train_cfg.text_encoder!r} gives {text_encoder.dim}-d states but "
                         f"ModelConfig.text_dim is {model_cfg.text_dim}")
    teacher = load_teacher(train_cfg.teacher, device=device) if train_cfg.repa_weight > 0 else None
    if teacher is not None and teacher.dim != model_cfg.repa_teacher_dim:
        raise ValueError(f"iREPA teacher {train_cfg.teacher!r} gives {teacher.dim} channels but "
                         f"ModelConfig.repa_teacher_dim is {model_cfg.repa_teacher_dim}")
    teacher_cache = TeacherCache(teacher) if teacher is not None else None

    all_shards = list_shards(shards)
    my_shards = shard_rank_split(all_shards, rank, world)
    codec = latent_cache = None
    factor = 1
    if train_cfg.space == "latent":
        from training.latent import DiffusersVAE, LatentCache

        codec = DiffusersVAE(train_cfg.vae_path, device=device)
        factor = codec.factor
        if codec.channels != model_cfg.in_channels:
            raise ValueError(f"VAE has {codec.channels} latent channels but ModelConfig.in_channels is "
                             f"{model_cfg.in_channels}")
        latent_cache = LatentCache(codec, my_shards, train_cfg.latent_cache_dir or None)
        latent_cache.build(lambda s: ShardDataset(s, train_cfg.batch_size, seed=0, shuffle=False, epochs=1,
                                                  stage_size=train_cfg.stage_size,
                                                  multiple=model_cfg.patch_size * factor))

    # Model, projector, EMA, optimizer; weights from a resumed checkpoint or from the previous stage.
    dit = DiT(model_cfg)
    projector = (IREPAProjector(model_cfg.dim, model_cfg.repa_teacher_dim, model_cfg.repa_hidden)
                 if teacher is not None else None)
    module = TrainModule(dit, projector)
    ema = copy.deepcopy(dit).requires_grad_(False)
    start_step, optim_state = 0, None
    if resume and ckpt_path.exists():
        ckpt = load_checkpoint(ckpt_path)
        _check_same_model(ckpt["model_config"], model_cfg, ckpt_path)
        dit.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        if projector is not None and ckpt.get("projector"):
            projector.load_state_dict(ckpt["projector"])
        start_step, optim_state = int(ckpt["step"]), ckpt["optimizer"]
        if is_main:
            log_fn(f"resuming {ckpt_path} at step {start_step}")
    elif init_from:
        ckpt = load_checkpoint(init_from)
        _check_same_model(ckpt["model_config"], model_cfg, init_from)
        dit.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        if projector is not None and ckpt.get("projector"):
            projector.load_state_dict(ckpt["projector"])
        if is_main:
            log_fn(f"initialised from {init_from} (its step {ckpt['step']}); new optimizer, step 0")
    dit.gradient_checkpointing = train_cfg.activation_checkpointing
    module.to(device)
    ema.to(device).eval()

    wrapped: nn.Module = module
    if world > 1 and train_cfg.strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        wrapped = DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    elif world > 1 and train_cfg.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for m in (dit, ema):
            for block in m.blocks:
                fully_shard(block)
            fully_shard(m)
        fully_shard(module)
    optimizer = torch.optim.AdamW(_param_groups(module, train_cfg.weight_decay), lr=train_cfg.lr,
                                  betas=(0.9, 0.95), fused=device.type == "cuda")
    if optim_state is not None:
        if world > 1 and train_cfg.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(module, optimizer, optim_state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(optim_state)

    def lr_at(step: int) -> float:
        return train_cfg.lr * min(1.0, (step + 1) / max(1, train_cfg.warmup_steps))

    params = count_parameters(dit) if world == 1 or train_cfg.strategy == "ddp" else sum(
        v.numel() for v in _full_state(dit).values())
    if is_main:
        truncate_metrics(metrics_path, start_step)
        log_fn(f"DiT {params / 1e6:.2f}M params, stage {train_cfg.stage_size}px, steps {start_step}->"
               f"{train_cfg.steps}, world {world}, device {device}, text {getattr(text_encoder, 'name', '?')}, "
               f"teacher {getattr(teacher, 'name', None)}, space {train_cfg.space}")

    dataset = ShardDataset(my_shards, train_cfg.batch_size, train_cfg.prompt_length_distribution,
                           seed=train_cfg.seed * 1_000_003 + rank * 7919 + start_step,
                           stage_size=train_cfg.stage_size, multiple=model_cfg.patch_size * factor)
    batches = iter(dataset)
    generator = torch.Generator().manual_seed(train_cfg.seed * 1_000_003 + rank * 7919 + start_step + 1)
    use_bf16 = train_cfg.precision == "bf16" and device.type == "cuda"
    if train_cfg.precision == "bf16" and not use_bf16:
        log.warning("precision='bf16' needs CUDA: training in fp32 on %s", device)
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_bf16 else nullcontext

    # the fixed yardstick, on rank 0 (FSDP shards the weights across ranks: no single-rank forward there)
    evaluate = is_main and not (world > 1 and train_cfg.strategy == "fsdp")
    eval_set = None
    if evaluate:
        eval_set = fixed_eval_batch(
            ShardDataset(my_shards, train_cfg.batch_size, train_cfg.prompt_length_distribution, seed=EVAL_SEED,
                         stage_size=train_cfg.stage_size, multiple=model_cfg.patch_size * factor),
            text_encoder, latent_cache, device, train_cfg.logit_normal_mean, train_cfg.logit_normal_std)
    initial_eval = eval_loss(ema, eval_set, autocast) if evaluate and start_step == 0 else None

    window = _Windows()
    last_loss = math.nan
    run_samples, run_start, step = 0, time.perf_counter(), start_step
    wrapped.train()
    while step < train_cfg.steps:
        batch = next(batches)
        images = batch["images"].to(device, non_blocking=True)
        x0 = latent_cache.for_batch(batch).to(device) if latent_cache is not None else images
        b = x0.shape[0]
        text, mask = text_encoder.encode(batch["prompts"])
        text, mask = text.to(device), mask.to(device)
        if train_cfg.cfg_dropout > 0 and mask.shape[1]:
            drop = torch.rand(b, generator=generator) < train_cfg.cfg_dropout
            mask = mask & ~drop.to(device)[:, None]
        t = sample_timesteps(b, train_cfg.logit_normal_mean, train_cfg.logit_normal_std, generator).to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
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
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if train_cfg.grad_clip > 0:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(module.parameters(), train_cfg.grad_clip))
        else:
            grad_norm = math.nan
        optimizer.step()
        step += 1
        decay = min(train_cfg.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            ema_params, params_now = list(ema.parameters()), list(dit.parameters())
            torch._foreach_lerp_(ema_params, params_now, 1 - decay)
        samples = b * world
        run_samples += samples
        window.add(loss.item(), loss_fm.item(), loss_repa.item(), grad_norm, samples)

        if step % train_cfg.log_every == 0 or step == train_cfg.steps:
            elapsed = time.perf_counter() - window.start
            last_loss = window.loss / window.n
            record = {"step": step, "loss": last_loss, "loss_fm": window.fm / window.n,
                      "loss_repa": window.repa / window.n, "grad_norm": window.grad / window.n,
                      "lr": lr_at(step - 1), "samples_per_second": window.samples / max(elapsed, 1e-9),
                      "bucket": batch["bucket"], "time": time.time()}
            if evaluate:
                record["eval_loss"] = eval_loss(ema, eval_set, autocast)
                if initial_eval is not None:  # the stage's starting point, on its first line only
                    record["eval_loss_initial"], initial_eval = initial_eval, None
            if is_main:
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                log_fn(f"step {step}/{train_cfg.steps} loss {record['loss']:.4f} (fm {record['loss_fm']:.4f}, "
                       f"repa {record['loss_repa']:.4f}) {record['samples_per_second']:.1f} samples/s")
            window.reset()
        if step % train_cfg.checkpoint_every == 0 or step == train_cfg.steps:
            _save(ckpt_path, module, ema, optimizer, step, model_cfg, train_cfg, world, is_main)
            if is_main and on_checkpoint is not None:
                on_checkpoint(step)
    run_seconds = time.perf_counter() - run_start
    if start_step >= train_cfg.steps and is_main:
        log_fn(f"{ckpt_path} already at step {start_step} >= {train_cfg.steps}: nothing to train")

    preview_path = None
    if train_cfg.preview_prompts and is_main and not (world > 1 and train_cfg.strategy == "fsdp"):
        from training.sampler import sample, sample_grid_png

        w, h = _preview_size(train_cfg.stage_size, model_cfg.patch_size * factor)
        images = sample(ema, text_encoder, list(train_cfg.preview_prompts), size=(w, h),
                        steps=train_cfg.preview_steps, cfg_scale=train_cfg.preview_cfg_scale, seed=train_cfg.seed,
                        vae=codec)
        preview_path = str(out / SAMPLES_NAME)
        tmp = out / f".{SAMPLES_NAME}.tmp"
        tmp.write_bytes(sample_grid_png(images))
        os.replace(tmp, preview_path)
    if world > 1:
        dist.barrier()
    return TrainResult(steps=max(step, start_step), final_loss=last_loss, metrics_path=str(metrics_path),
                       checkpoint_path=str(ckpt_path),
                       samples_per_second=run_samples / run_seconds if run_samples else 0.0, params=params,
                       preview_path=preview_path)


def _preview_size(stage_size: int, multiple: int) -> tuple[int, int]:
    side = max(multiple, round(max(stage_size, multiple) / multiple) * multiple)
    return side, side


def _save(path: Path, module: TrainModule, ema: DiT, optimizer: torch.optim.Optimizer, step: int,
          model_cfg: ModelConfig, train_cfg: TrainConfig, world: int, is_main: bool) -> None:
    sharded = world > 1 and train_cfg.strategy == "fsdp"
    model_state, ema_state = _full_state(module.dit), _full_state(ema)
    projector_state = _full_state(module.projector) if module.projector is not None else {}
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim_state = get_optimizer_state_dict(module, optimizer,
                                               options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        optim_state = optimizer.state_dict()
    if is_main:
        save_checkpoint(path, {"model": model_state, "ema": ema_state, "projector": projector_state,
                               "optimizer": optim_state, "step": step, "model_config": asdict(model_cfg),
                               "train_config": asdict(train_cfg), "world_size": world})
    if world > 1:
        dist.barrier()


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, shards: Sequence[str] | str, out_dir: str | os.PathLike,
          *, resume: bool = True, init_from: str | os.PathLike | None = None,
          log: Callable[[str], None] | None = None,
          on_checkpoint: Callable[[int], None] | None = None) -> TrainResult:
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

    Returns:
        The TrainResult of the stage.
    """
    return _run(model_cfg, train_cfg, shards, out_dir, resume, init_from, log or _module_log, on_checkpoint)


def _module_log(message: str) -> None:
    log.info(message)


def train_loop_per_worker(config: dict[str, Any],
                          on_checkpoint: Callable[[int], None] | None = None) -> dict[str, Any]:
    """The training loop for a Ray Train (or torchrun) worker; plain data in and out.

    Args:
        config: `model_config` and `train_config` (asdict of the configs), `shards` (list of paths or URIs),
            `out_dir` (a local directory), optional `init_from` (a local checkpoint) and `resume` (default True).
        on_checkpoint: see `train`; only rank 0 calls it.

    Returns:
        `asdict(TrainResult)` (rank 0's files; other ranks return their own throughput).
    """
    logging.basicConfig(level=logging.INFO)
    model_cfg = config_from_dict(ModelConfig, config["model_config"])
    train_cfg = config_from_dict(TrainConfig, config["train_config"])
    result = _run(model_cfg, train_cfg, config["shards"], config["out_dir"], config.get("resume", True),
                  config.get("init_from"), _module_log, on_checkpoint)
    return asdict(result)
