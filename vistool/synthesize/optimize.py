"""The optimisation loop shared by every synthesised image.

Each step renders the parameterised images, transforms them (one ``grid_sample``),
normalises them as the model expects, runs the model only as far as the objective needs
(:func:`vistool.core.hooks.forward_until`), and takes an Adam step on the
parameterisation along the gradient of the objective. The model's weights are frozen for
the call and its train/eval flags, ``requires_grad`` and ``.grad`` come back as they were.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.devices import model_device
from ..core.hooks import forward_until, redirected_relus
from ..core.imageio import normalisation
from ..core.layout import detect
from ..core.state import preserved_state
from .objectives import INPUT, Objective
from .param import ImageParam
from .transform import Transforms

__all__ = ["Optimized", "evaluate", "optimize"]

Callback = Callable[[int, torch.Tensor], None]


@dataclass
class Optimized:
    """Result of :func:`optimize`: ``images`` (N, C, H, W) in [0, 1] and ``history``
    (steps, N), the objective of every image at every step (before that step's update)."""

    images: torch.Tensor
    history: torch.Tensor


def _score(model: nn.Module, objective: Objective, images: torch.Tensor,
           mean: torch.Tensor, std: torch.Tensor, redirect_relu: bool = False) -> torch.Tensor:
    """The objective of ``images``; with ``redirect_relu`` the model's ReLUs redirect their
    gradient (:func:`redirected_relus`, a torch function mode: around the model alone, as
    it adds a Python call to every torch operation while it is on)."""
    layers = [name for name in objective.layers if name != INPUT]
    redirect = redirected_relus(model) if redirect_relu else contextlib.nullcontext()
    with redirect:
        acts = forward_until(model, (images - mean) / std, layers) if layers else {}
    for name, value in acts.items():  # channels-last and token layers as (N, C, H, W)
        view = detect(tuple(getattr(value, "shape", ())), images.shape[2:])
        if view is not None and view.layout != "nchw":
            acts[name] = view.to_grid(value)
    acts[INPUT] = images
    return objective(acts)


def _schedule(optimizer: torch.optim.Optimizer, steps: int, final_lr: float | None,
              warmup: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """Linear warm-up from lr / warmup to lr over ``warmup`` steps, then a cosine from lr to
    ``final_lr`` (or lr throughout) over the remaining steps; None for a constant lr."""
    if final_lr is None and warmup <= 0:
        return None
    lr = optimizer.param_groups[0]["lr"]
    end = 1.0 if final_lr is None else final_lr / lr
    span = max(steps - 1 - warmup, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min((step - warmup) / span, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def optimize(model: nn.Module, objective: Objective, param: ImageParam,
             generators: Sequence[torch.Generator], steps: int, lr: float,
             transforms: Transforms, mean: Sequence[float], std: Sequence[float],
             callback: Callback | None = None, final_lr: float | None = None,
             warmup: int = 0, redirect_relu: bool = False) -> Optimized:
    """Maximise ``objective`` over the images of ``param`` for ``steps`` Adam steps.

    The learning rate is ``lr`` throughout, or, with ``final_lr``, decays from ``lr`` to
    ``final_lr`` on a cosine over the steps (the images settle into their optimum); with
    ``warmup``, it first rises linearly to ``lr`` over that many steps (large steps from
    the flat start image overshoot). ``redirect_relu`` back-propagates through every
    ReLU (modules and functional) with lucid's redirected gradient (:func:`redirected_relus`),
    so that a channel that is off for the whole image still gets a gradient.

    Image ``i`` is transformed with ``generators[i]``, so with an objective that treats
    the images separately (every objective except ``diversity``) an image does not depend
    on the other images of its batch. ``callback(step, values)`` is called after every step.
    """
    mean_t, std_t = normalisation(mean, std, model_device(model))
    param = param.to(mean_t.device)
    weights = list(param.parameters())
    optimizer = torch.optim.Adam(weights, lr=lr)
    schedule = _schedule(optimizer, steps, final_lr, warmup)
    history = []
    with preserved_state(model, eval_mode=True, frozen=True), torch.enable_grad():
        for step in range(steps):
            values = _score(model, objective, transforms(param(), generators), mean_t, std_t,
                            redirect_relu)
            grads = torch.autograd.grad(-values.sum(), weights)
            for weight, grad in zip(weights, grads):
                weight.grad = grad
            optimizer.step()
            if schedule is not None:
                schedule.step()
            history.append(values.detach())
            if callback is not None:
                callback(step, values.detach())
        images = param().detach()
    return Optimized(images=images, history=torch.stack(history) if history else
                     torch.empty(0, images.shape[0]))


@torch.no_grad()
def evaluate(model: nn.Module, objective: Objective, images: torch.Tensor,
             mean: Sequence[float], std: Sequence[float], transforms: Transforms | None = None,
             generators: Sequence[torch.Generator] | None = None, samples: int = 1) -> torch.Tensor:
    """The objective of ``images`` (N,), averaged over ``samples`` random transformations
    when ``transforms`` is given (transformation-robust score), else of the images as they are."""
    mean_t, std_t = normalisation(mean, std, model_device(model))
    images = images.to(mean_t.device)
    with preserved_state(model, eval_mode=True):
        if transforms is None:
            return _score(model, objective, images, mean_t, std_t)
        return torch.stack([_score(model, objective, transforms(images, generators), mean_t,
                                   std_t) for _ in range(samples)]).mean(0)
