"""Named recipes: model + data + optimiser settings that reach a stated accuracy.

Only ``shapes-cnn`` exists so far; it is the model behind ``make demo``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms import v2

from .data import ShapesDataset
from .loop import FitConfig, fit
from .models import get_model, model_defaults

__all__ = ["cache_dir", "pretrained_shapes_cnn", "train_shapes_cnn"]


def cache_dir() -> Path:
    """The user cache directory of vistool (``$XDG_CACHE_HOME/vistool`` or ``~/.cache/vistool``)."""
    root = os.environ.get("VISTOOL_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "vistool")
    return Path(root)


def train_shapes_cnn(out_dir: Path, epochs: int = 6, n_train: int = 5000, n_val: int = 500,
                     seed: int = 0, device: str = "cpu", progress: bool = True, lr: float = 1e-2,
                     log=None) -> dict[str, Any]:
    """Train ``shapes_cnn`` on the synthetic shapes; returns the best epoch's metrics."""
    defaults = model_defaults("shapes_cnn")
    size = defaults["input_size"][1]
    normalize = v2.Normalize(defaults["mean"], defaults["std"])
    train = ShapesDataset(n_train, size=size, seed=seed, transform=normalize)
    val = ShapesDataset(n_val, size=size, seed=seed + 10_000, transform=normalize)
    kwargs = {"num_classes": len(ShapesDataset.classes)}
    torch.manual_seed(seed)  # the initial weights are part of the run
    model = get_model("shapes_cnn", **kwargs)
    metadata = {"arch": "shapes_cnn", "arch_kwargs": kwargs, "classes": ShapesDataset.classes,
                "dataset": "shapes", "recipe": "shapes-cnn", **defaults}
    config = FitConfig(epochs=epochs, batch_size=64, lr=lr, seed=seed, device=device,
                       progress=progress)
    return fit(model, train, val, config, out_dir, metadata, log=log)


def pretrained_shapes_cnn(progress: bool = True, log=None) -> Path:
    """The cached ``shapes-cnn`` checkpoint, trained on first use (about a minute on a CPU)."""
    out_dir = cache_dir() / "shapes-cnn-v1"
    best = out_dir / "best.safetensors"
    if not best.is_file():
        train_shapes_cnn(out_dir, progress=progress, log=log)
    return best
