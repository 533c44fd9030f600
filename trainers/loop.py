"""One readable training loop for classifiers: seeded, with progress, metrics log and checkpoints.

Checkpoints are vistool checkpoints (safetensors + metadata) that ``vistool.zoo`` reopens
without further arguments.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from vistool.checkpoint import save_checkpoint
from vistool.outputs import atomic_path

__all__ = ["FitConfig", "evaluate", "fit"]


@dataclass
class FitConfig:
    """Options of :func:`fit`."""

    epochs: int = 3
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """Mean cross-entropy loss and accuracy of ``model`` (in eval mode) over ``loader``."""
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    return {"val_loss": loss_sum / count, "val_acc": correct / count}


def fit(model: nn.Module, train: Dataset, val: Dataset, config: FitConfig, out_dir: Path,
        metadata: dict[str, Any], log: Callable[[str], None] | None = None) -> dict[str, float]:
    """Train ``model`` with AdamW and a one-cycle schedule; write checkpoints into ``out_dir``.

    Writes ``best.safetensors`` (highest validation accuracy), ``last.safetensors`` and
    ``metrics.jsonl`` (one line per epoch). ``metadata`` (arch, arch_kwargs, classes,
    input_size, mean, std, dataset ...) is stored in every checkpoint together with the
    epoch, metrics, config and seed. Returns the best epoch's metrics.
    """
    log = log or (lambda line: print(line, file=sys.stderr))
    device = torch.device(config.device)
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model.to(device)
    train_loader = DataLoader(train, batch_size=config.batch_size, shuffle=True,
                              generator=generator, drop_last=True)
    val_loader = DataLoader(val, batch_size=256)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * len(train_loader))
    out_dir.mkdir(parents=True, exist_ok=True)
    best: dict[str, float] = {"val_acc": -1.0}
    lines = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        start = time.perf_counter()
        bar = tqdm(train_loader, desc=f"epoch {epoch}/{config.epochs}", leave=False,
                   disable=not config.progress, file=sys.stderr)
        train_loss = 0.0
        for x, y in bar:
            x, y = x.to(device), y.to(device)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            train_loss += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        metrics = {"epoch": epoch, "train_loss": train_loss / len(train_loader),
                   **evaluate(model, val_loader, device),
                   "seconds": time.perf_counter() - start}
        log(f"epoch {epoch}: train_loss={metrics['train_loss']:.4f} "
            f"val_loss={metrics['val_loss']:.4f} val_acc={metrics['val_acc']:.4f}")
        lines.append(json.dumps(metrics))
        with atomic_path(out_dir / "metrics.jsonl") as tmp:
            tmp.write_text("\n".join(lines) + "\n")
        meta = {**metadata, "epoch": epoch, "metrics": metrics, "seed": config.seed,
                "config": asdict(config)}
        save_checkpoint(out_dir / "last.safetensors", model, meta)
        if metrics["val_acc"] > best["val_acc"]:
            best = metrics
            save_checkpoint(out_dir / "best.safetensors", model, meta)
    model.eval()
    return best
