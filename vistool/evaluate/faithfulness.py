"""Faithfulness metrics: what happens to the model's score when the pixels an explanation
calls important are removed or revealed.

* :func:`perturbation_curve`: the deletion and insertion curves of RISE (Petsiuk et al.
  2018) and their area under the curve; deletion with a constant baseline is Quantus'
  ``PixelFlipping`` curve.
* :func:`confidence_change`: average drop and increase in confidence (Chattopadhyay et al.
  2018), the image multiplied by its map.
* :func:`road_curve`: ROAD (Rong et al. 2022), pixels removed and imputed from their
  neighbours (noisy linear imputation), most- or least-relevant first.

All of them run every perturbed image of every image through the model in batches of
``batch_size``, on the images' device, with a private inference copy of the model
(:func:`vistool.explainers.inference.inference_copy`); the caller's model is not touched.
Scores are the softmax probabilities of the target classes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..core.devices import DeviceConstant
from ..core.progress import bar_disable
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..explainers.inference import inference_copy, many_forwards_batch

__all__ = [
    "BASELINES",
    "Curve",
    "Scorer",
    "baseline_images",
    "confidence_change",
    "impute",
    "perturbation_curve",
    "removal_ranks",
    "road_curve",
]

BASELINES = ("constant", "blur", "mean")


@dataclass
class Curve:
    """A perturbation curve per image.

    Attributes:
        fractions: (S + 1,) the share of pixels perturbed at each step, 0 to 1.
        scores: (N, S + 1) the target's probability at each step.
        auc: (N,) the area under the curve (trapezoid rule over ``fractions``).
        mode: ``deletion``, ``insertion``, ``road-morf`` or ``road-lerf``.
    """

    fractions: torch.Tensor
    scores: torch.Tensor
    auc: torch.Tensor
    mode: str


def _trapezoid(scores: torch.Tensor, fractions: torch.Tensor) -> torch.Tensor:
    return torch.trapezoid(scores, fractions.to(scores), dim=1)


class Scorer:
    """Softmax probabilities of target classes for many forward passes of one model:
    ``scorer(images, targets) -> (B,)``, from a fused inference copy of the model
    (:func:`~vistool.explainers.inference.inference_copy`, built once) in eval mode without
    gradients; ``batch`` is the batch to use: at most ``batch_size``, smaller on CPU where
    activations would be large (:func:`~vistool.explainers.inference.many_forwards_batch`).

    Every function here takes a ``Scorer`` in place of the model, so that several curves of
    the same model share one copy (:func:`vistool.evaluate.evaluate` does). The caller's
    model keeps its flags."""

    def __init__(self, model: LoadedModel | nn.Module, sample: torch.Tensor,
                 batch_size: int = 64):
        self.net = model.model if isinstance(model, LoadedModel) else model
        with preserved_state(self.net, eval_mode=True):
            self.fast = inference_copy(self.net, fuse=True, sample=sample[:1])
            self.batch = many_forwards_batch(self.fast, sample[:1].contiguous(
                memory_format=torch.channels_last), batch_size)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # the copy is the model itself when it could not be copied: eval mode for the call
        state = (preserved_state(self.net, eval_mode=True) if self.fast is self.net
                 else contextlib.nullcontext())
        with state, torch.inference_mode():
            logits = self.fast(images.contiguous(memory_format=torch.channels_last))
        return logits.float().softmax(1).gather(1, targets[:, None])[:, 0]


Model = LoadedModel | nn.Module | Scorer


def _scorer(model: Model, images: torch.Tensor, batch_size: int) -> Scorer:
    return model if isinstance(model, Scorer) else Scorer(model, images, batch_size)


def baseline_images(images: torch.Tensor, baseline: str | float | torch.Tensor = "constant",
                    value: float = 0.0) -> torch.Tensor:
    """What removed pixels become: ``constant`` (``value`` in the model's input space: 0 is
    the normalisation mean), ``blur`` (Gaussian blur, kernel 11 and sigma 5 as in RISE),
    ``mean`` (each image's channel means), a number, or a tensor broadcastable to the images."""
    if isinstance(baseline, torch.Tensor):
        return baseline.to(images).expand_as(images)
    if isinstance(baseline, (int, float)):
        return torch.full_like(images, float(baseline))
    if baseline == "constant":
        return torch.full_like(images, value)
    if baseline == "mean":
        return images.mean((2, 3), keepdim=True).expand_as(images)
    if baseline == "blur":
        from torchvision.transforms.v2.functional import gaussian_blur

        return gaussian_blur(images, kernel_size=[11, 11], sigma=[5.0, 5.0])
    raise ValueError(f"unknown baseline {baseline!r}; choose one of {', '.join(BASELINES)}, "
                     "a number or a tensor")


def removal_ranks(maps: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """(N, H, W) maps -> (N, H*W): each pixel's place in the order of removal (0 first).
    Most important first by default; ties go in reading order (a stable sort)."""
    flat = maps.flatten(1).float()
    order = torch.argsort(-flat if descending else flat, dim=1, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return ranks


def _targets(images: torch.Tensor, targets) -> torch.Tensor:
    if targets is None:
        raise ValueError("targets are required: the class of each image")
    return torch.as_tensor(targets, device=images.device).long().expand(images.shape[0])


def _check(images: torch.Tensor, maps: torch.Tensor) -> None:
    if maps.shape != (images.shape[0], *images.shape[2:]):
        raise ValueError(f"maps must be (N, H, W) matching images {tuple(images.shape)}; got "
                         f"{tuple(maps.shape)}")


def _curve_scores(score, images, start, end, ranks, counts, targets, batch_size, desc, progress,
                  fill: Callable | None = None) -> torch.Tensor:
    """Scores (N, S + 1) of ``where(rank < count, end, start)`` for every image and count,
    in batches of ``batch_size`` perturbed images; ``fill(batch, removed, index)`` may
    replace the perturbed pixels afterwards (ROAD's imputation)."""
    n, steps = images.shape[0], counts.numel()
    scores = torch.empty(n * steps, device=images.device)
    shape = (-1, 1, *images.shape[2:])
    for first in tqdm(range(0, n * steps, batch_size), desc=desc, disable=bar_disable(progress),
                      leave=False):
        pairs = torch.arange(first, min(first + batch_size, n * steps), device=images.device)
        i, k = pairs // steps, pairs % steps
        removed = (ranks[i] < counts[k, None]).view(shape)
        batch = torch.where(removed, end[i], start[i])
        if fill is not None:
            batch = fill(batch, removed, pairs)
        scores[pairs] = score(batch, targets[i])
    return scores.view(n, steps)


def perturbation_curve(model: Model, images: torch.Tensor, maps: torch.Tensor,
                       targets, mode: str = "deletion", steps: int = 24,
                       baseline: str | float | torch.Tensor | None = None,
                       batch_size: int = 64, progress: bool = False) -> Curve:
    """The deletion or insertion curve of each image's map (RISE).

    Deletion removes the most important pixels first (all channels of a pixel at once),
    replacing them with the baseline, and the target's probability should fall fast (lower
    AUC is better). Insertion starts from the baseline and reveals the most important pixels
    first (higher AUC is better). Step ``k`` of ``steps`` perturbs ``round(k * H * W /
    steps)`` pixels, so the curve has ``steps + 1`` points, the first the unperturbed
    (deletion) or fully-baseline (insertion) image. Ties in the map go in reading order.

    Args:
        model: the classifier (:class:`~vistool.zoo.LoadedModel` or ``nn.Module``), or a
            :class:`Scorer` of it.
        images: the preprocessed batch (N, C, H, W) on the model's device.
        maps: (N, H, W) importance of each pixel (higher = more important).
        targets: the class per image (int or (N,)).
        mode: ``deletion`` or ``insertion``.
        steps: the number of perturbation steps.
        baseline: :func:`baseline_images`' choices; default as RISE: ``constant`` 0 for
            deletion, ``blur`` for insertion.
        batch_size: perturbed images per forward pass (a given :class:`Scorer` has its own).
        progress: show a progress bar.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, got {mode!r}")
    _check(images, maps)
    base = baseline_images(images, baseline if baseline is not None else
                           ("constant" if mode == "deletion" else "blur"))
    pixels = maps[0].numel()
    fractions = torch.linspace(0, 1, steps + 1, device=images.device)
    counts = torch.round(fractions * pixels).long()
    ranks = removal_ranks(maps.to(images.device))
    start, end = (images, base) if mode == "deletion" else (base, images)
    score = _scorer(model, images, batch_size)
    scores = _curve_scores(score, images, start, end, ranks, counts, _targets(images, targets),
                           score.batch, mode, progress)
    return Curve(fractions=fractions, scores=scores, auc=_trapezoid(scores, fractions), mode=mode)


def confidence_change(model: Model, images: torch.Tensor, maps: torch.Tensor,
                      targets, batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Average drop and increase in confidence (Grad-CAM++), per image: with ``Y`` the
    target's probability on the image and ``O`` on the image multiplied by its map (in the
    model's input space, so a zero of the map becomes the normalisation mean),
    ``drop = max(0, Y - O) / Y`` (lower is better) and ``increase = 1 if O > Y else 0``
    (higher is better). ``maps`` should be in [0, 1]."""
    _check(images, maps)
    score, index = _scorer(model, images, batch_size), _targets(images, targets)
    masked = images * maps.to(images)[:, None]
    y, o = (torch.cat([score(x[i:i + score.batch], index[i:i + score.batch])
                       for i in range(0, len(x), score.batch)]) for x in (images, masked))
    return (y - o).clamp(min=0) / y.clamp(min=1e-12), (o > y).float()


_NEIGHBOURS = DeviceConstant([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6],
                              [1 / 12, 1 / 6, 1 / 12]])
#: Conjugate-gradient steps between two convergence tests (each waits for the device).
_CHECK_EVERY = 8


def impute(images: torch.Tensor, removed: torch.Tensor, noise: float | torch.Tensor = 0.01,
           tol: float = 1e-5) -> torch.Tensor:
    """ROAD's noisy linear imputation: every removed pixel becomes the weighted mean of its
    eight neighbours (1/6 for the sides, 1/12 for the corners, over the neighbours inside the
    image), all removed pixels solved together, plus Gaussian noise of std ``noise``.

    The linear system (a graph Laplacian restricted to the removed pixels, symmetric
    positive definite) is solved by conjugate gradients, batched over images and channels,
    to a relative residual of ``tol``, starting from the solution at half the resolution
    (so large holes need few iterations). ``removed``: (N, 1, H, W) bool; ``noise``: the
    std, or the noise itself as a tensor like ``images``.
    """
    x = _solve(images, removed, tol)
    if not isinstance(noise, torch.Tensor):
        noise = noise * torch.randn_like(images)
    return torch.where(removed, x + noise, images)


def _coarse_guess(images: torch.Tensor, removed: torch.Tensor, tol: float) -> torch.Tensor:
    """The system solved at half the resolution (known pixels averaged), upsampled."""
    known = (~removed).to(images.dtype)
    count = F.avg_pool2d(known, 2, ceil_mode=True)
    mean = F.avg_pool2d(images * known, 2, ceil_mode=True) / count.clamp(min=1e-12)
    coarse = _solve(mean, count == 0, tol)
    return F.interpolate(coarse, size=images.shape[2:], mode="nearest")


def _solve(images: torch.Tensor, removed: torch.Tensor, tol: float) -> torch.Tensor:
    c = images.shape[1]
    kernel = _NEIGHBOURS.like(images)[None, None].expand(c, 1, 3, 3)
    unknown = removed.to(images.dtype).expand_as(images)

    def neighbours(x):
        return F.conv2d(x, kernel, padding=1, groups=c)

    weight = neighbours(torch.ones_like(images))  # the neighbours' weights inside the image

    def apply(v):
        return unknown * (weight * v - neighbours(unknown * v))

    b = unknown * neighbours((1 - unknown) * images)
    x = (unknown * _coarse_guess(images, removed, tol) if min(images.shape[2:]) >= 16
         and bool(removed.any()) else torch.zeros_like(images))
    r = b - apply(x)
    p = r.clone()
    rr = (r * r).sum((2, 3), keepdim=True)
    stop = tol ** 2 * (b * b).sum((2, 3), keepdim=True)
    for step in range(4 * max(images.shape[2:]) + 10):
        # Reading the residual makes the host wait for the device: look every few steps.
        if step % _CHECK_EVERY == 0 and bool((rr <= stop).all()):
            break
        ap = apply(p)
        alpha = rr / (p * ap).sum((2, 3), keepdim=True).clamp(min=1e-30)
        x = x + alpha * p
        r = r - alpha * ap
        rr_new = (r * r).sum((2, 3), keepdim=True)
        p = r + (rr_new / rr.clamp(min=1e-30)) * p
        rr = rr_new
    return torch.where(removed, x, images)


def road_curve(model: Model, images: torch.Tensor, maps: torch.Tensor,
               targets, order: str = "morf", percentages=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7,
                                                          0.8, 0.9),
               noise: float = 0.01, seed: int = 0, batch_size: int = 64,
               progress: bool = False) -> Curve:
    """ROAD: remove a share of the pixels, most relevant first (``morf``, lower AUC is
    better) or least relevant first (``lerf``, higher is better), impute them from their
    neighbours (:func:`impute`, which leaves no trace of the removal's shape for the model
    to use) and score the target. The curve has a point for 0 and one per percentage;
    ``seed`` seeds the imputation noise."""
    if order not in ("morf", "lerf"):
        raise ValueError(f"order must be morf or lerf, got {order!r}")
    _check(images, maps)
    fractions = torch.tensor([0.0, *percentages], device=images.device)
    counts = torch.round(fractions * maps[0].numel()).long()
    ranks = removal_ranks(maps.to(images.device), descending=order == "morf")
    generator = torch.Generator(images.device).manual_seed(seed)
    jitter = noise * torch.randn(images.shape, generator=generator, device=images.device,
                                 dtype=images.dtype)  # one draw per image: batch-independent

    def fill(batch, removed, pairs):
        return impute(batch, removed, jitter[pairs // counts.numel()])

    score = _scorer(model, images, batch_size)
    scores = _curve_scores(score, images, images, images, ranks, counts,
                           _targets(images, targets), score.batch, f"road-{order}", progress,
                           fill)
    return Curve(fractions=fractions, scores=scores, auc=_trapezoid(scores, fractions),
                 mode=f"road-{order}")
