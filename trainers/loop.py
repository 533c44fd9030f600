"""One training loop for every recipe: device, AMP, channels-last, DDP, logs, checkpoints,
resume. :func:`train` is a short loop; the steps it calls follow it in the order it calls
them. There is no framework underneath.

* Devices: ``auto`` picks CUDA, then MPS, then CPU (:func:`vistool.core.devices.start_processes`).
  Under ``torchrun`` each process takes ``cuda:LOCAL_RANK`` (nccl) or the CPU (gloo); the
  training and validation data are split between the processes, only rank 0 logs and
  writes. Each process draws its own random numbers (noise, dropout): the seed is mixed
  with the rank, and resume restores each rank's own generator states.
* DDP runs with ``broadcast_buffers=False``: a GAN's discriminator runs twice (real, fake)
  before one backward, and a buffer broadcast at the second forward would rewrite the batch
  norm statistics the first one saved for backward. Each process keeps its own running
  statistics during the epoch; they are averaged over the processes before validation.
* AMP: bf16 where the GPU computes it natively (or on the CPU), else fp16 with a gradient
  scaler, updated once per iteration however many optimisers step.
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
import itertools
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from vistool.core.checkpoint import save_checkpoint
from vistool.core.devices import start_processes
from vistool.core.errors import VistoolError
from vistool.core.files import atomic_path
from vistool.core.progress import bar_disable
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
    limit_batches: int | None = None  # at most this many training batches per epoch


#: Steps between two progress-bar loss readings (each one waits for the GPU).
_POSTFIX_EVERY = 25


def rank_seed(seed: int, rank: int) -> int:
    """The seed of process ``rank``: ``seed`` itself for the first (so a one-process run
    and rank 0 agree), a different stream for each other rank."""
    return (seed + rank * 0x9E3779B97F4A7C15) % 2**64


def _autocast_factory(device: torch.device, amp: bool):
    """(autocast context factory, GradScaler or None). bf16 on the CPU and on GPUs that
    compute it natively (Ampere on); fp16 with a scaler on the others (T4, V100), where
    ``is_bf16_supported()`` would count the slow emulated bf16."""
    if not amp or device.type == "mps":
        return contextlib.nullcontext, None
    if device.type == "cuda":
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        dtype = torch.bfloat16 if native else torch.float16
    else:
        dtype = torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if dtype == torch.float16 else None
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


@dataclass
class _Run:
    """Everything one run holds: what it was given, what setup built, and the history."""

    task: Task
    config: TrainConfig
    out_dir: Path
    metadata: dict[str, Any]
    log: Callable[[str], None]
    rank: int
    world: int
    device: torch.device
    channels_last: bool
    optimizers: list[torch.optim.Optimizer]
    schedulers: list[Any]
    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    sampler: DistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader
    history: list[dict] = field(default_factory=list)
    best: dict[str, Any] | None = None
    initial: dict[str, Any] | None = None
    start_epoch: int = 1
    sample_batch: torch.Tensor | None = None
    val_sharded: bool = False

    @property
    def pinned(self) -> bool:
        """The loaders pin their batches (CUDA): copies to the device need not block."""
        return self.device.type == "cuda"

    @property
    def main(self) -> bool:
        """Only the first process logs and writes."""
        return self.rank == 0

    @property
    def state_path(self) -> Path:
        return self.out_dir / "last-state.pt"

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Backward pass, gradient clipping and optimiser step (scaled under fp16 AMP; the
        scale is updated once per iteration, by :func:`_train_steps`)."""
        optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(optimizer)
        else:
            loss.backward()
        if self.config.grad_clip:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.config.grad_clip)
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()


def train(task: Task, data: DataSpec, config: TrainConfig, out_dir: Path,
          metadata: dict[str, Any], resume: bool = False,
          log=None) -> dict[str, Any]:
    """Train ``task`` on ``data``; write checkpoints, ``metrics.jsonl``, ``metrics.png`` and
    sample grids into ``out_dir``. Returns the best epoch's metrics, with ``history`` (every
    epoch) and ``initial`` (the validation metrics before training).

    ``metadata`` (arch, arch_kwargs, classes, input_size, mean, std, dataset, recipe) goes
    into every checkpoint with the epoch, metrics, config and seed.
    """
    run = _setup(task, data, config, out_dir, metadata,
                 log or (lambda line: print(line, flush=True)))
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        _resume(run)
    with _tuned_backends(run.device):
        if run.start_epoch == 1:  # the untrained model's validation metrics, for comparison
            run.initial = _validate(run)
        for epoch in range(run.start_epoch, config.epochs + 1):
            metrics = _run_epoch(run, epoch)
            run.history.append(metrics)
            better = _improves(task, metrics, run.best)
            if better:
                run.best = metrics
            rng = _rng_states(run)  # every process's generators, for the state file
            if run.main:
                _save_state(run, epoch, rng)  # everything --resume needs, in one file
                _save_outputs(run, epoch, metrics, better)
            if run.world > 1:
                dist.barrier()
    task.model.eval()
    if run.main:
        _write_manifest(run, data)
    return _result(run)


def _setup(task: Task, data: DataSpec, config: TrainConfig, out_dir: Path,
           metadata: dict[str, Any], log: Callable[[str], None]) -> _Run:
    """Processes and device, seed, model on its device, optimisers, AMP, loaders."""
    rank, world, device = start_processes(config.device)
    if config.batch_size % world:
        raise VistoolError(f"--batch-size {config.batch_size} is not divisible by the "
                           f"{world} processes")
    torch.manual_seed(rank_seed(config.seed, rank))
    channels_last = _place_model(task, device, world, config.channels_last)
    optimizers = task.build_optimizers()
    autocast, scaler = _autocast_factory(device, config.amp)
    sampler, train_loader, val_loader = _loaders(data, config, rank, world, device)
    total = config.epochs * _steps_per_epoch(train_loader, config)
    schedulers = [s for s in (_scheduler(config.schedule, opt, total) for opt in optimizers)
                  if s is not None]
    return _Run(task=task, config=config, out_dir=out_dir, metadata=metadata, log=log,
                rank=rank, world=world, device=device, channels_last=channels_last,
                optimizers=optimizers, schedulers=schedulers, autocast=autocast,
                scaler=scaler, sampler=sampler, train_loader=train_loader,
                val_loader=val_loader, val_sharded=len(val_loader.dataset) < len(data.val))


def _steps_per_epoch(loader: DataLoader, config: TrainConfig) -> int:
    """The training batches of one epoch: the loader's, or ``limit_batches`` if fewer."""
    return min(len(loader), config.limit_batches or len(loader))


@contextlib.contextmanager
def _tuned_backends(device: torch.device):
    """The book's models train on inputs of one size: on CUDA, let cuDNN time its kernels
    once and keep the fastest (the setting comes back afterwards)."""
    before = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def _place_model(task: Task, device: torch.device, world: int,
                 channels_last: bool | None) -> bool:
    """Move the task's model to ``device`` (channels-last: None means on for CUDA), have
    the task wrap its trainable modules in DDP when there are several processes."""
    model = task.model.to(device)
    if channels_last is None:
        channels_last = device.type == "cuda"
    if channels_last:
        model.to(memory_format=torch.channels_last)
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [device.index] if device.type == "cuda" else None
        task.wrap = lambda m: DDP(m, device_ids=ids, broadcast_buffers=False) if any(
            p.requires_grad for p in m.parameters()) else m
    task.prepare()
    return channels_last


def _loaders(data: DataSpec, config: TrainConfig, rank: int, world: int,
             device: torch.device) -> tuple[DistributedSampler, DataLoader, DataLoader]:
    """The seeded sampler and the train/validation loaders of this process."""
    sampler = DistributedSampler(data.train, num_replicas=world, rank=rank, shuffle=True,
                                 seed=config.seed, drop_last=True)
    per_rank = config.batch_size // world
    loader_kw = {"num_workers": config.workers, "pin_memory": device.type == "cuda",
                 "persistent_workers": config.workers > 0}
    train_loader = DataLoader(data.train, batch_size=per_rank, sampler=sampler, drop_last=True,
                              **loader_kw)
    val = data.val
    if world > 1 and len(val) >= world:  # each process validates its share
        val = torch.utils.data.Subset(val, range(rank, len(val), world))
    val_loader = DataLoader(val, batch_size=max(per_rank, 256), **loader_kw)
    if len(train_loader) == 0:
        raise VistoolError(f"the training set has {len(data.train)} images, fewer than one "
                           f"batch of {config.batch_size}; lower --batch-size")
    return sampler, train_loader, val_loader


def _resume(run: _Run) -> None:
    """Restore weights, optimisers, schedulers, scaler, RNG and history from the state of
    the last completed epoch, if there is one."""
    if not run.state_path.is_file():
        if run.main:
            run.log(f"nothing to resume in {run.out_dir}; starting from scratch")
        return
    from vistool.core.checkpoint import apply_state_dict

    state = torch.load(run.state_path, map_location="cpu", weights_only=True)
    apply_state_dict(run.task.model, state["model"], str(run.state_path))
    for opt, sd in zip(run.optimizers, state["optimizers"]):
        opt.load_state_dict(sd)
    for sched, sd in zip(run.schedulers, state["schedulers"]):
        sched.load_state_dict(sd)
    if run.scaler is not None and state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    _restore_rng(run, state)
    run.history, run.best, run.initial = state["history"], state["best"], state["initial"]
    run.start_epoch = state["epoch"] + 1
    if run.main:
        run.log(f"resuming {run.out_dir} at epoch {run.start_epoch}")


def _rng_states(run: _Run) -> list[dict[str, torch.Tensor]]:
    """The generator states of every process (CPU, and the process's CUDA or MPS device),
    by rank; a collective: every process calls it."""
    state = {"cpu": torch.get_rng_state()}
    if run.device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(run.device)
    elif run.device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    if run.world == 1:
        return [state]
    states: list[Any] = [None] * run.world
    dist.all_gather_object(states, state)
    return states


def _restore_rng(run: _Run, state: dict[str, Any]) -> None:
    """Each process takes back its own generator states; a state written by another
    number of processes (or by an older vistool) gives the processes other than the
    first a fresh stream from their rank and the epoch."""
    states = state.get("rng_by_rank")
    if states is None:  # an older state file: one CPU (and CUDA) state for every rank
        states = [{"cpu": state["rng"], "cuda": state.get("cuda_rng")}]
    if len(states) != run.world and run.rank > 0:
        torch.manual_seed(rank_seed(run.config.seed + state["epoch"], run.rank))
        return
    mine = states[run.rank]
    torch.set_rng_state(mine["cpu"])
    if run.device.type == "cuda" and mine.get("cuda") is not None:
        torch.cuda.set_rng_state(mine["cuda"], run.device)
    elif run.device.type == "mps" and mine.get("mps") is not None:
        torch.mps.set_rng_state(mine["mps"])


def _average_buffers(run: _Run) -> None:
    """Average the batch-norm running statistics over the processes: DDP does not
    broadcast them (see the module docstring)."""
    if run.world == 1:
        return
    with torch.no_grad():
        for module in run.task.model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and \
                    module.running_mean is not None:
                for buffer in (module.running_mean, module.running_var):
                    dist.all_reduce(buffer)
                    buffer /= run.world


def _validate(run: _Run) -> dict[str, float]:
    """The validation metrics over the whole validation set (each process evaluates its
    share; the means are weighted by the shares' sizes)."""
    _average_buffers(run)
    metrics = run.task.evaluate(run.val_loader, run.device, run.autocast)
    if not run.val_sharded:
        return metrics
    keys = sorted(metrics)
    count = len(run.val_loader.dataset)
    packed = torch.tensor([metrics[k] * count for k in keys] + [count], dtype=torch.float64,
                          device=run.device)
    dist.all_reduce(packed)
    total = float(packed[-1])
    return {k: float(v) / total for k, v in zip(keys, packed[:-1])}


def _run_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    """Train one epoch, then validate; returns the epoch's row of ``metrics.jsonl``."""
    started = time.perf_counter()
    means, step_losses = _train_steps(run, epoch)
    train_seconds = time.perf_counter() - started
    means = _average_over_processes(run, means)
    metrics: dict[str, Any] = {"epoch": epoch, "train_loss": means["loss"]}
    metrics.update({f"train_{k}": v for k, v in means.items() if k != "loss"})
    metrics.update(_validate(run))
    metrics["seconds"] = round(time.perf_counter() - started, 3)
    samples = _steps_per_epoch(run.train_loader, run.config) * run.config.batch_size
    metrics["samples_per_s"] = round(samples / train_seconds, 1)
    quarter = max(1, len(step_losses) // 4)  # loss over the first and last quarter
    metrics["first_steps_loss"] = sum(step_losses[:quarter]) / quarter
    metrics["last_steps_loss"] = sum(step_losses[-quarter:]) / quarter
    return metrics


def _train_steps(run: _Run, epoch: int) -> tuple[dict[str, float], list[float]]:
    """One pass over this process's share of the training set; returns the mean of every
    value ``task.step`` reports, and the loss of every step. The values stay on the device
    until the epoch ends (the progress bar reads the loss every few steps): the host never
    waits for the GPU step by step."""
    run.sampler.set_epoch(epoch)  # the order depends only on the seed and the epoch
    run.task.model.train()
    totals: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    step_losses: list[torch.Tensor] = []
    bar = tqdm(run.train_loader, desc=f"epoch {epoch}/{run.config.epochs}", leave=False,
               total=_steps_per_epoch(run.train_loader, run.config),
               disable=bar_disable(run.config.progress and run.main), file=sys.stderr)
    for x, y in itertools.islice(bar, _steps_per_epoch(run.train_loader, run.config)):
        x = x.to(run.device, non_blocking=run.pinned)
        y = y.to(run.device, non_blocking=run.pinned)
        if run.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if run.sample_batch is None:
            run.sample_batch = x[:8].detach().clone()
        values = run.task.step(x, y, run.optimizers, run.backward, run.autocast)
        if run.scaler is not None:  # once per iteration, after every optimiser stepped
            run.scaler.update()
        for sched in run.schedulers:
            sched.step()
        for key, value in values.items():
            totals[key] = totals[key] + value if key in totals else value.detach().clone()
            counts[key] = counts.get(key, 0) + 1
        step_losses.append(values["loss"])
        if not bar.disable and len(step_losses) % _POSTFIX_EVERY == 1:
            bar.set_postfix(loss=f"{float(values['loss']):.4f}")
    bar.close()
    means = torch.stack([totals[k] / counts[k] for k in totals]).tolist()
    return dict(zip(totals, means)), torch.stack(step_losses).tolist()


def _average_over_processes(run: _Run, means: dict[str, float]) -> dict[str, float]:
    """The mean of each process's ``means`` (unchanged in a 1-process run)."""
    if run.world == 1:
        return means
    keys = sorted(means)
    packed = torch.tensor([means[k] for k in keys], dtype=torch.float64, device=run.device)
    dist.all_reduce(packed)
    return {k: float(v) / run.world for k, v in zip(keys, packed)}


def _best_by(task: Task) -> str:
    """How ``best.safetensors`` is picked, as the manifest and the checkpoints say it."""
    if task.monitor is None:
        return "the last epoch (the task's validation loss does not measure its outputs)"
    return f"the {'highest' if task.mode == 'max' else 'lowest'} {task.monitor}"


def _improves(task: Task, metrics: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether ``metrics`` beats ``best`` on the task's monitored validation metric (always,
    for a task that monitors none: its best is its last epoch)."""
    if best is None or task.monitor is None:
        return True
    if task.mode == "max":
        return metrics[task.monitor] > best[task.monitor]
    return metrics[task.monitor] < best[task.monitor]


def _save_state(run: _Run, epoch: int, rng: list[dict[str, torch.Tensor]]) -> None:
    """``last-state.pt``: weights, optimisers, schedulers, scaler, every process's RNG
    states and the history of the same epoch in one atomically written file, so a kill
    never mixes epochs."""
    state = {"epoch": epoch, "model": run.task.model.state_dict(),
             "optimizers": [o.state_dict() for o in run.optimizers],
             "schedulers": [s.state_dict() for s in run.schedulers],
             "scaler": run.scaler.state_dict() if run.scaler is not None else None,
             "rng_by_rank": rng,
             "history": run.history, "best": run.best, "initial": run.initial}
    with atomic_path(run.state_path) as tmp:
        torch.save(state, tmp)


def _save_outputs(run: _Run, epoch: int, metrics: dict[str, Any], better: bool) -> None:
    """Checkpoints (``last``, and ``best`` when ``better``), the sample grid,
    ``metrics.jsonl``, ``metrics.png`` and the epoch's log line."""
    out_dir, model = run.out_dir, run.task.model
    meta = {**run.metadata, "epoch": epoch, "metrics": metrics, "seed": run.config.seed,
            "config": asdict(run.config), "world_size": run.world,
            "best_by": _best_by(run.task)}
    save_checkpoint(out_dir / "last.safetensors", model, meta)
    if better:
        save_checkpoint(out_dir / "best.safetensors", model, meta)
    samples = run.task.samples(run.sample_batch) if run.sample_batch is not None else None
    if samples is not None:
        save_png(out_dir / f"samples-epoch{epoch:03d}.png", _grid(samples))
    with atomic_path(out_dir / "metrics.jsonl") as tmp:
        tmp.write_text("".join(json.dumps(h) + "\n" for h in run.history))
    _plot(run.history, out_dir / "metrics.png")
    shown = " ".join(f"{k}={metrics[k]:.4f}" for k in ("train_loss", "val_loss", "val_acc")
                     if k in metrics)
    run.log(f"epoch {epoch}/{run.config.epochs}: {shown}")


def _write_manifest(run: _Run, data: DataSpec) -> None:
    from vistool.outputs import manifest, save_json

    outputs = sorted(p.name for p in run.out_dir.iterdir() if not p.name.startswith("."))
    seconds = round(sum(h["seconds"] for h in run.history), 3)
    save_json(run.out_dir / "manifest.json", manifest(
        "train", [data.name], {**asdict(run.config), "world_size": run.world}, outputs,
        seed=run.config.seed, timings={"seconds": seconds},
        recipe=run.metadata.get("recipe"), best=run.best, best_by=_best_by(run.task)))


def _result(run: _Run) -> dict[str, Any]:
    """The best epoch's metrics with ``history`` and ``initial``; refuses a diverged run."""
    result = dict(run.best or {})
    result["history"] = run.history
    result["initial"] = run.initial
    if not math.isfinite(result.get("train_loss", 0.0)):
        raise VistoolError("training diverged (loss is not finite); lower --lr")
    return result
