"""Sanity checks for saliency maps (Adebayo et al. 2018): does the explanation change when
the model it explains is destroyed?

:func:`randomisation_check` randomises the model's layers one after another, from the output
down (cascading, as Quantus' ``MPRT`` with ``layer_order="top_down"``), on a private copy —
never the caller's model — and measures at each step how similar the new maps are to the
original ones: Spearman rank correlation and SSIM, per image. A faithful method's similarity
falls as soon as the head is random; guided backprop's famously stays high.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..core.errors import VistoolError
from ..core.progress import bar_disable
from ..core.zoo import LoadedModel

__all__ = ["SanityResult", "randomisable_layers", "randomisation_check", "spearman", "ssim"]

Explainer = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SanityResult:
    """The cascading randomisation's similarities.

    Attributes:
        layers: the layer randomised at each step (all the earlier ones stay random).
        spearman: (steps, N) rank correlation of each image's map with its original.
        ssim: (steps, N) structural similarity of the maps (in [0, 1], data range 1).
        maps: (steps + 1, H, W) the first image's map before and after each step.
    """

    layers: list[str]
    spearman: torch.Tensor
    ssim: torch.Tensor
    maps: torch.Tensor


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along dim 1 with ties given their average rank (as scipy's ``rankdata``), of
    CPU values (in float64, which MPS lacks)."""
    n, m = values.shape
    sorted_values, order = values.sort(dim=1, stable=True)
    new = torch.ones_like(sorted_values, dtype=torch.bool)
    new[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    group = new.long().cumsum(1) - 1 + torch.arange(n)[:, None] * m
    position = torch.arange(1, m + 1, dtype=torch.float64).expand(n, m)
    mean = torch.zeros(n * m, dtype=torch.float64).scatter_reduce(
        0, group.flatten(), position.flatten(), "mean", include_self=False)
    ranks = torch.empty(n, m, dtype=torch.float64)
    ranks.scatter_(1, order, mean[group].view(n, m))
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation of each pair of maps (N, ...) (ties averaged, as scipy).
    A constant map has no ranking to agree with: its correlation is 0. Computed on the
    CPU in float64; returned on ``a``'s device."""
    ra, rb = _ranks(a.flatten(1).cpu().double()), _ranks(b.flatten(1).cpu().double())
    ra, rb = ra - ra.mean(1, keepdim=True), rb - rb.mean(1, keepdim=True)
    denominator = (ra.norm(dim=1) * rb.norm(dim=1))
    rho = (ra * rb).sum(1) / denominator.where(denominator > 0, 1.0)
    return torch.where(denominator > 0, rho, 0.0).float().to(a.device)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 7, data_range: float = 1.0
         ) -> torch.Tensor:
    """Mean structural similarity of each pair of maps (N, H, W), as scikit-image's
    ``structural_similarity`` with its defaults (7×7 uniform window, sample covariance,
    K1 = 0.01, K2 = 0.03, the border of half a window left out); maps smaller than the
    window use the largest odd window that fits (at least 3: smaller maps raise a
    VistoolError). Computed on the CPU in float64; returned
    on ``a``'s device."""
    x, y = a[:, None].cpu().double(), b[:, None].cpu().double()
    side = min(x.shape[-2:])
    if side < 3:  # a 1-pixel window has no sample variance
        raise VistoolError(f"SSIM needs maps of at least 3x3 pixels, got "
                           f"{tuple(x.shape[-2:])}; compare larger maps")
    window = min(window, side if side % 2 else side - 1)

    def mean(t):
        return F.avg_pool2d(t, window, stride=1)
    cov = window * window / (window * window - 1)
    ux, uy = mean(x), mean(y)
    vx, vy = cov * (mean(x * x) - ux * ux), cov * (mean(y * y) - uy * uy)
    vxy = cov * (mean(x * y) - ux * uy)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux ** 2 + uy ** 2 + c1) * (vx + vy + c2))
    return s.mean((1, 2, 3)).float().to(a.device)


def randomisable_layers(net: nn.Module) -> list[str]:
    """The modules that hold parameters of their own and can re-initialise them
    (``reset_parameters``), from the output down."""
    return [name for name, module in net.named_modules()
            if hasattr(module, "reset_parameters")
            and any(True for _ in module.parameters(recurse=False))][::-1]


def randomisation_check(model: LoadedModel | nn.Module, images: torch.Tensor,
                        targets: torch.Tensor, explainer: Explainer,
                        layers: Sequence[str] | None = None, seed: int = 0,
                        progress: bool = False) -> SanityResult:
    """Model-parameter randomisation test, cascading from the top layer down.

    Args:
        model: the classifier; it is copied, never modified.
        images: preprocessed batch (N, C, H, W) on the model's device.
        targets: (N,) the class explained in every step (fixed, not re-predicted).
        explainer: ``explainer(net, images, targets) -> maps (N, H, W)`` in [0, 1], e.g.
            ``lambda net, x, t: vistool.explain(net, x, "gradcam", t, layer=...).maps``.
        layers: the layers to randomise, in order (default: :func:`randomisable_layers`);
            each step keeps the earlier ones random.
        seed: seeds the re-initialisations (PyTorch's default init of each layer).
        progress: a progress bar over the steps.
    """
    net = model.model if isinstance(model, LoadedModel) else model
    order = list(layers) if layers is not None else randomisable_layers(net)
    if not order:
        raise VistoolError("the model has no layers with parameters to randomise")
    modules = dict(net.named_modules())
    missing = [name for name in order if name not in modules]
    if missing:
        raise VistoolError(f"no layer named {missing[0]!r} to randomise")
    original = explainer(net, images, targets).detach()
    victim = copy.deepcopy(net)
    victims = dict(victim.named_modules())
    rho, sim, maps = [], [], [original[0]]
    bar = tqdm(order, desc="sanity", disable=bar_disable(progress), leave=False)
    for step, name in enumerate(bar):
        with torch.random.fork_rng(devices=[images.device] if images.is_cuda else []):
            torch.manual_seed(seed + step)
            victims[name].reset_parameters()
        current = explainer(victim, images, targets).detach()
        rho.append(spearman(original, current))
        sim.append(ssim(original, current))
        maps.append(current[0])
    return SanityResult(layers=order, spearman=torch.stack(rho), ssim=torch.stack(sim),
                        maps=torch.stack(maps))
