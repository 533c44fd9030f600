"""One training loop for every recipe: device, AMP, channels-last, DDP, logs, checkpoints,
resume. Read it top to bottom; there is no framework underneath.

* Devices: ``auto`` picks CUDA, then MPS, then CPU. Under ``torchrun`` each process takes
  ``cuda:LOCAL_RANK`` (nccl) or the CPU (gloo); data is split with a distributed sampler,
  only rank 0 logs and writes.
* The sampler is a ``DistributedSampler`` even in one process (one replica), reseeded per
  epoch: the order of the data depends only on the seed and the epoch, which makes a
  resumed run and a 2-process run follow the 1-process run exactly.
* Checkpoints: ``best.safetensors`` and ``last.safetensors`` (weights + metadata, opened by
  vistool) and ``last-state.pt`` (weights, optimisers, schedulers, scaler, RNG, history:
  everything ``resume`` needs, in one file), each written atomically after every epoch.
  A run killed mid-epoch resumes at the start of that epoch and ends with the same
  weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from vistool.core.checkpoint import save_checkpoint
from vistool.core.devices import resolve_device
from vistool.core.errors import VistoolError
from vistool.core.files import atomic_path
from vistool.outputs import save_png

from .data import DataSpec
from .tasks import Task

__all__ = ["TrainConfig", "train"]


@dataclass
class TrainConfig:
    """Options of :func:`train` (every one is a ``vistool train`` flag)."""

    epochs: int = 5
    batch_size: int = 64  # global: split over the processes of a DDP run
    lr: float = 1e-3
    schedule: str = "onecycle"  # onecycle | cosine | constant
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool | None = None  # None: on for CUDA
    workers: int = 0
    grad_clip: float | None = None
    progress: bool = True


def _distributed() -> tuple[int, int, int]:
    """(rank, world size, local rank); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, 0
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    return dist.get_rank(), world, local


def _autocast_factory(device: torch.device, amp: bool):
    if not amp or device.type == "mps":
        return contextlib.nullcontext, None
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.bfloat16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    return (lambda: torch.autocast(device.type, dtype=dtype)), scaler


def _scheduler(name: str, optimizer, total: int):
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    if name == "constant":
        return None
    raise VistoolError(f"unknown schedule {name!r}; use onecycle, cosine or constant")


def _plot(history: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    keys = [k for k in ("train_loss", "val_loss", "val_acc") if k in history[0]]
    fig, axes = plt.subplots(1, 2 if "val_acc" in keys else 1, figsize=(9, 3.5), squeeze=False)
    for key in ("train_loss", "val_loss"):
        axes[0, 0].plot(epochs, [h[key] for h in history], marker="o", label=key)
    axes[0, 0].set_xlabel("epoch")
    axes[0, 0].legend()
    if "val_acc" in keys:
        axes[0, 1].plot(epochs, [h["val_acc"] for h in history], marker="o", color="C2")
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_ylabel("val_acc")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _grid(images: torch.Tensor, nrow: int = 8) -> torch.Tensor:
    from torchvision.utils import make_grid

    images = images.detach().float().cpu()
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    return make_grid(images, nrow=nrow, padding=2, pad_value=1.0)


def train(task: Task, data: DataSpec, config: TrainConfig, out_dir: Path,
          metadata: dict[str, Any], resume: bool = False,
          log=None) -> dict[str, Any]:
    """Train ``task`` on ``data``; write checkpoints, ``metrics.jsonl``, ``metrics.png`` and
    sample grids into ``out_dir``. Returns the best epoch's metrics, with ``history`` (every
    epoch) and ``initial`` (the validation metrics before training).

    ``metadata`` (arch, arch_kwargs, classes, input_size, mean, std, dataset, recipe) goes
    into every checkpoint with the epoch, metrics, config and seed.
    """
    rank, world, local_rank = _distributed()
    main = rank == 0
    log = log or (lambda line: print(line, flush=True))
    if config.device == "auto" and world > 1 and torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
    else:
        device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if config.batch_size % world:
        raise VistoolError(f"--batch-size {config.batch_size} is not divisible by the "
                           f"{world} processes")
    torch.manual_seed(config.seed)
    model = task.model.to(device)
    channels_last = config.channels_last if config.channels_last is not None else (
        device.type == "cuda")
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        task.wrap = lambda m: DDP(m, device_ids=ids) if any(
            p.requires_grad for p in m.parameters()) else m
    task.prepare()
    optimizers = task.build_optimizers()
    autocast, scaler = _autocast_factory(device, config.amp)

    sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    per_rank = config.batch_size // world
    loader_kw = {"num_workers": config.workers, "pin_memory": device.type == "cuda",
                 "persistent_workers": config.workers > 0}
    train_loader = DataLoader(data.train, batch_size=per_rank, sampler=sampler, drop_last=True,
                              **loader_kw)
    val_loader = DataLoader(data.val, batch_size=max(per_rank, 256), **loader_kw)
    steps = len(train_loader)
    if steps == 0:
        raise VistoolError(f"the training set has {len(data.train)} images, fewer than one "
                           f"batch of {config.batch_size}; lower --batch-size")
    schedulers = [s for s in (_scheduler(config.schedule, opt, config.epochs * steps)
                              for opt in optimizers) if s is not None]

    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = out_dir / "last-state.pt"
    history: list[dict] = []
    best: dict[str, Any] | None = None
    start_epoch = 1
    if resume and state_path.is_file():
        from vistool.core.checkpoint import apply_state_dict

        state = torch.load(state_path, map_location="cpu", weights_only=True)
        apply_state_dict(model, state["model"], str(state_path))
        for opt, sd in zip(optimizers, state["optimizers"]):
            opt.load_state_dict(sd)
        for sched, sd in zip(schedulers, state["schedulers"]):
            sched.load_state_dict(sd)
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        history, best, initial = state["history"], state["best"], state["initial"]
        start_epoch = state["epoch"] + 1
        if main:
            log(f"resuming {out_dir} at epoch {start_epoch}")
    elif resume and main:
        log(f"nothing to resume in {out_dir}; starting from scratch")
    if start_epoch == 1:  # the untrained model's validation metrics, for comparison
        initial = task.evaluate(val_loader, device, autocast)

    def backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if config.grad_clip:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()

    sample_batch = None
    for epoch in range(start_epoch, config.epochs + 1):
        sampler.set_epoch(epoch)
        model.train()
        started = time.perf_counter()
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        step_losses = []
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                   disable=not (config.progress and main), file=sys.stderr)
        for x, y in bar:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if sample_batch is None:
                sample_batch = x[:8].detach().clone()
            values = task.step(x, y, optimizers, backward, autocast)
            for sched in schedulers:
                sched.step()
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + 1
            step_losses.append(values["loss"])
            bar.set_postfix(loss=f"{values['loss']:.4f}")
        train_seconds = time.perf_counter() - started
        if world > 1:  # average the epoch's training losses over the processes
            keys = sorted(totals)
            packed = torch.tensor([totals[k] / counts[k] for k in keys], dtype=torch.float64,
                                  device=device)
            dist.all_reduce(packed)
            totals = {k: float(v) / world for k, v in zip(keys, packed)}
            counts = dict.fromkeys(keys, 1)
        metrics: dict[str, Any] = {"epoch": epoch, "train_loss": totals["loss"] / counts["loss"]}
        metrics.update({f"train_{k}": v / counts[k] for k, v in totals.items() if k != "loss"})
        metrics.update(task.evaluate(val_loader, device, autocast))
        metrics["seconds"] = round(time.perf_counter() - started, 3)
        metrics["samples_per_s"] = round(steps * config.batch_size / train_seconds, 1)
        quarter = max(1, len(step_losses) // 4)  # loss over the first and last quarter
        metrics["first_steps_loss"] = sum(step_losses[:quarter]) / quarter
        metrics["last_steps_loss"] = sum(step_losses[-quarter:]) / quarter
        history.append(metrics)
        better = best is None or (
            metrics[task.monitor] > best[task.monitor] if task.mode == "max"
            else metrics[task.monitor] < best[task.monitor])
        if better:
            best = metrics
        if main:
            # The resume state comes first, in one file: weights, optimisers, schedulers,
            # scaler, RNG and history of the same epoch, so a kill never mixes epochs.
            state = {"epoch": epoch, "model": model.state_dict(),
                     "optimizers": [o.state_dict() for o in optimizers],
                     "schedulers": [s.state_dict() for s in schedulers],
                     "scaler": scaler.state_dict() if scaler is not None else None,
                     "rng": torch.get_rng_state(),
                     "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda"
                     else None,
                     "history": history, "best": best, "initial": initial}
            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)
            meta = {**metadata, "epoch": epoch, "metrics": metrics, "seed": config.seed,
                    "config": asdict(config), "world_size": world}
            save_checkpoint(out_dir / "last.safetensors", model, meta)
            if better:
                save_checkpoint(out_dir / "best.safetensors", model, meta)
            samples = task.samples(sample_batch) if sample_batch is not None else None
            if samples is not None:
                save_png(out_dir / f"samples-epoch{epoch:03d}.png", _grid(samples))
            with atomic_path(out_dir / "metrics.jsonl") as tmp:
                tmp.write_text("".join(json.dumps(h) + "\n" for h in history))
            _plot(history, out_dir / "metrics.png")
            shown = " ".join(f"{k}={metrics[k]:.4f}" for k in
                             ("train_loss", "val_loss", "val_acc") if k in metrics)
            log(f"epoch {epoch}/{config.epochs}: {shown}")
        if world > 1:
            dist.barrier()
    model.eval()
    if main:
        from vistool.outputs import manifest, save_json

        save_json(out_dir / "manifest.json", manifest(
            "train", [data.name], {**asdict(config), "world_size": world}, sorted(
                p.name for p in out_dir.iterdir() if not p.name.startswith(".")),
            seed=config.seed, timings={"seconds": round(sum(h["seconds"] for h in history), 3)},
            recipe=metadata.get("recipe"), best=best))
    result = dict(best or {})
    result["history"] = history
    result["initial"] = initial
    if not math.isfinite(result.get("train_loss", 0.0)):
        raise VistoolError("training diverged (loss is not finite); lower --lr")
    return result
