"""The optimisation loop shared by every synthesised image.

Each step renders the parameterised images, transforms them (one ``grid_sample``),
normalises them as the model expects, runs the model only as far as the objective needs
(:func:`vistool.core.hooks.forward_until`), and takes an Adam step on the
parameterisation along the gradient of the objective. The model's weights are frozen for
the call and its train/eval flags, ``requires_grad`` and ``.grad`` come back as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.devices import model_device
from ..core.hooks import forward_until
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
           mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    layers = [name for name in objective.layers if name != INPUT]
    acts = forward_until(model, (images - mean) / std, layers) if layers else {}
    acts[INPUT] = images
    return objective(acts)


def _normalisation(model: nn.Module, mean: Sequence[float], std: Sequence[float]):
    device = model_device(model)
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1),
            torch.tensor(std, device=device).view(1, -1, 1, 1))


def optimize(model: nn.Module, objective: Objective, param: ImageParam,
             generators: Sequence[torch.Generator], steps: int, lr: float,
             transforms: Transforms, mean: Sequence[float], std: Sequence[float],
             callback: Callback | None = None, final_lr: float | None = None) -> Optimized:
    """Maximise ``objective`` over the images of ``param`` for ``steps`` Adam steps.

    The learning rate is ``lr`` throughout, or, with ``final_lr``, decays from ``lr`` to
    ``final_lr`` on a cosine over the steps (the images settle into their optimum).

    Image ``i`` is transformed with ``generators[i]``, so with an objective that treats
    the images separately (every objective except ``diversity``) an image does not depend
    on the other images of its batch. ``callback(step, values)`` is called after every step.
    """
    mean_t, std_t = _normalisation(model, mean, std)
    param = param.to(mean_t.device)
    weights = list(param.parameters())
    optimizer = torch.optim.Adam(weights, lr=lr)
    schedule = None if final_lr is None else torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, max(steps - 1, 1), eta_min=final_lr)
    history = []
    with preserved_state(model, eval_mode=True, frozen=True), torch.enable_grad():
        for step in range(steps):
            values = _score(model, objective, transforms(param(), generators), mean_t, std_t)
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
    mean_t, std_t = _normalisation(model, mean, std)
    images = images.to(mean_t.device)
    with preserved_state(model, eval_mode=True):
        if transforms is None:
            return _score(model, objective, images, mean_t, std_t)
        return torch.stack([_score(model, objective, transforms(images, generators), mean_t,
                                   std_t) for _ in range(samples)]).mean(0)
