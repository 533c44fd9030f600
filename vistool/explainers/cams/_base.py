"""What a CAM method is (:class:`CamMethod`, its specification) and what it gets
(:class:`CamContext`: the request and one forward pass's results), with the pieces the
methods share: gradients (closed form or autograd), the channel sum (or, with
``eigen_smooth``, the first principal component) and the principal-component projection.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch
from torch import nn

from ...core.hooks import record
from ...core.layout import GridView, ReshapeView

__all__ = ["CamContext", "CamMethod", "Param", "gradients_at", "per_layer",
           "principal_component"]


@dataclass(frozen=True)
class Param:
    """A method's own option (``explain(..., options={name: value})``, the CLI's
    ``--option NAME=VALUE``): its default, its type and what it does."""

    default: float | int | str
    help: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class CamMethod:
    """The specification of one CAM method: everything :func:`~vistool.explain`, the fast
    copies, the CLI, the dashboard and ``evaluate`` need to know about it.

    Attributes:
        name: what users type (``--method NAME``).
        maps: the method: the context in, the raw layer-resolution map per layer out
            ((N, k, h, w), after the method's ReLU; k = targets per image).
        summary: one line for ``--help`` and the docs.
        gradients: needs ``d score / d A`` of the explained layers (``ctx.gradients``).
        head: ``"never"``; ``"use"``: the gradients come in closed form when the layer is
            followed by global average pooling and a linear classifier alone (no backward
            pass); ``"require"``: only defined with such a head (CAM).
        class_target: needs class indices (a callable target is refused).
        forwards: the extra forward passes it makes, for the docs and the bench.
        eigen_smooth: ``eigen_smooth=True`` applies (the map is a channel sum, replaced by
            the first principal component of the weighted activations).
        fuse: how the maps of several layers combine by default (``"mean"``, ``"product"``,
            ``"sum"``).
        own_copy: makes its own fast copies of the model (:func:`~vistool.fast_copy`
            hands it the model).
        score: the explained score from the model output and the class indices (N, k),
            in the graph; None: the output at the indices.
        params: the method's own options.
        hooks: ``(net, layers) -> context manager`` the forward pass runs in, for what the
            layers' outputs do not hold (LeGrad: attention probabilities); what it yields is
            ``ctx.captured``.
        reference: the implementation its tests compare with.
    """

    name: str
    maps: Callable[[CamContext], dict[str, torch.Tensor]]
    summary: str
    gradients: bool = False
    head: str = "never"
    class_target: bool = False
    forwards: str = "none"
    eigen_smooth: bool = False
    fuse: str = "mean"
    own_copy: bool = False
    score: Callable[[torch.Tensor, torch.Tensor, Mapping], torch.Tensor] | None = None
    params: Mapping[str, Param] = field(default_factory=dict)
    hooks: Callable[[nn.Module, list[str]], AbstractContextManager] | None = None
    reference: str = ""

    @property
    def peer(self) -> str | None:
        """The peer class the tests and the bench compare the method with, as a dotted path
        (``"pytorch_grad_cam.GradCAM"``): the first word of ``reference`` when it names a
        class of pytorch-grad-cam or torch-cam, else None."""
        first = self.reference.split(" ", 1)[0].rstrip(",")
        return first if first.startswith(("pytorch_grad_cam.", "torchcam.methods.")) else None

    def __post_init__(self):
        if self.head not in ("never", "use", "require"):
            raise ValueError(f"CamMethod {self.name!r}: head must be 'never', 'use' or "
                             f"'require', not {self.head!r}")


@dataclass
class CamContext:
    """What every method's ``maps`` gets: the request and one forward pass's results."""

    net: nn.Module
    images: torch.Tensor
    method: CamMethod
    layers: list[str]
    acts: dict[str, torch.Tensor]  # per layer, as the layer outputs it, in the graph
    views: dict[str, GridView | ReshapeView]  # per layer: its output as (N, K, h, w)
    index: torch.Tensor | None  # class indices (N, k); None for a callable target
    scores: torch.Tensor  # the explained outputs (N, k)
    logits: torch.Tensor
    heads: dict[str, nn.Linear | None]  # the probed GAP + linear heads; empty if not probed
    closed_form: bool  # every layer has a head: gradients in closed form
    batch_size: int | None
    channels: int | None
    progress: bool
    eigen_smooth: bool = False
    layout: str = "auto"  # explain()'s layout= and reshape=, for methods that explain again
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    explain: Callable[..., object] | None = None  # explain() itself, to explain crops (sess)
    captured: object = None  # what the method's hooks captured in the forward pass
    _gradients: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    def grid(self, name: str) -> torch.Tensor:
        """Layer ``name``'s detached output as (N, K, h, w)."""
        return self.views[name].to_grid(self.acts[name].detach())

    def gradients(self, name: str) -> torch.Tensor:
        """``d score / d A`` of layer ``name`` as (N, k, K, h, w) ((N, k, K, 1, 1) in closed
        form), detached; computed for every layer at once on the first call."""
        if self._gradients is None:
            grads = _closed_form(self) if self.closed_form else _autograd(self)
            self._gradients = {n: self.views[n].to_grid(g.detach(), lead=2)
                               for n, g in grads.items()}
        return self._gradients[name]

    def channel_sum(self, weighted: torch.Tensor) -> torch.Tensor:
        """(N, k, K, h, w) -> (N, k, h, w): the sum over channels, or with ``eigen_smooth``
        the first principal component of the weighted activations; through ReLU."""
        if self.eigen_smooth:
            n, k = weighted.shape[:2]
            return principal_component(weighted.flatten(0, 1)).unflatten(0, (n, k)).clamp_min(0)
        return weighted.sum(2).clamp_min(0)

    def weighted_sum(self, weights: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """sum_K weights[n, k, K] * act[n, K] -> (N, k, h, w), through ReLU (with
        ``eigen_smooth`` the principal component of the weighted activations)."""
        if self.eigen_smooth:
            return self.channel_sum(weights[..., None, None] * act[:, None])
        return torch.einsum("nkc,nchw->nkhw", weights, act).clamp_min(0)


def principal_component(act: torch.Tensor, sign: str = "sum") -> torch.Tensor:
    """(N, K, h, w) -> (N, h, w): the projection of each position's K-vector onto the first
    principal component (positions centred), as pytorch-grad-cam's ``get_2d_projection``.

    An SVD's sign is arbitrary; ``sign`` fixes it: ``"sum"`` makes the projection agree
    with the channel sum (strong activations map high), ``"peak"`` makes its largest
    magnitude positive (Seg-Eigen-CAM's correction)."""
    n, k, h, w = act.shape
    exact = torch.promote_types(act.dtype, torch.float32)  # half in float32, float64 kept
    flat = torch.nan_to_num(act.reshape(n, k, h * w).transpose(1, 2).to(exact))  # (N, hw, K)
    centred = flat - flat.mean(1, keepdim=True)
    proj = _first_projection(centred)
    if not bool(torch.isfinite(proj).all()):  # (LAPACK's eigh can fail where an SVD does not)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        proj = (centred @ vh[:, 0, :, None])[..., 0]
    if sign == "sum":  # (each scaled to a largest magnitude of 1: tiny products underflow)
        flip = (_unit(proj) * _unit(flat.sum(2))).sum(1) < 0
    else:
        flip = proj.amin(1).abs() > proj.amax(1).abs()
    proj = torch.where(flip[:, None], -proj, proj)
    return proj.reshape(n, h, w).to(act.dtype)


def _unit(rows: torch.Tensor) -> torch.Tensor:
    """Each row scaled to a largest magnitude of 1 (a zero row stays zero)."""
    top = rows.abs().amax(-1, keepdim=True)
    return rows / torch.where(top > 0, top, torch.ones_like(top))


def _first_projection(centred: torch.Tensor) -> torch.Tensor:
    """(N, n, K) centred rows -> (N, n): their projection onto the first right singular
    vector, found as the top eigenvector of the smaller Gram matrix (an SVD of resnet50's
    layer3, 196 x 1024 per image, takes 6x as long); the Gram matrix of the rows scaled to
    a largest magnitude of 1 (squaring tiny values would underflow)."""
    scale = centred.abs().amax((1, 2), keepdim=True)
    unit = _unit(centred.flatten(1)).view_as(centred)
    if centred.shape[2] <= centred.shape[1]:
        vector = torch.linalg.eigh(unit.mT @ unit)[1][..., -1:]  # (N, K, 1)
        return (centred @ vector)[..., 0]
    values, vectors = torch.linalg.eigh(unit @ unit.mT)  # centred @ v = sigma u
    return vectors[..., -1] * values[..., -1:].clamp_min(0).sqrt() * scale[..., 0]


def gradients_at(ctx: CamContext, images: torch.Tensor
                 ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One more forward and backward pass, on ``images`` (shaped like ``ctx.images``) for
    the same class indices: per layer, the detached output (N, K, h, w) and
    ``d score / d A`` (N, k, K, h, w)."""
    with torch.enable_grad(), record(ctx.net, ctx.layers, gradients=True) as rec:
        output = ctx.net(images)
        scores = (output.gather(1, ctx.index) if ctx.method.score is None
                  else ctx.method.score(output, ctx.index, ctx.options))
    other = CamContext(**{**ctx.__dict__, "images": images, "scores": scores, "acts": {
        name: rec[name] for name in ctx.layers}, "_gradients": None})
    grads = _autograd(other)
    return ({name: other.grid(name) for name in ctx.layers},
            {name: ctx.views[name].to_grid(g.detach(), lead=2) for name, g in grads.items()})


def _closed_form(ctx: CamContext) -> dict[str, torch.Tensor]:
    """d score / d A per layer from the GAP + linear head, (N, k, K, 1, 1): the score's
    gradient in the logits times W, over h * w; no backward pass through the model."""
    if ctx.method.score is None:
        coeff = None
    else:  # d score / d logits of the method's own score, on the logits alone
        with torch.enable_grad():
            logits = ctx.logits.detach().requires_grad_(True)
            score = ctx.method.score(logits, ctx.index, ctx.options)
            coeff = torch.stack([torch.autograd.grad(score[:, j].sum(), logits,
                                                     retain_graph=True)[0]
                                 for j in range(score.shape[1])], 1)  # (N, k, C)
    grads = {}
    for name in ctx.layers:
        h, w = ctx.acts[name].shape[2:]
        weight = ctx.heads[name].weight
        per_class = weight[ctx.index] if coeff is None else coeff @ weight
        grads[name] = (per_class / (h * w))[..., None, None].detach()
    return grads


def _autograd(ctx: CamContext) -> dict[str, torch.Tensor]:
    """d score / d A per layer, (N, k, K, h, w) in the layer's layout: one
    ``autograd.grad`` per target to all layers at once."""
    scores, layers = ctx.scores, ctx.layers
    per_target = []
    for j in range(scores.shape[1]):
        with torch.enable_grad():  # the caller may be inside torch.no_grad()
            found = torch.autograd.grad(
                scores[:, j].sum(), [ctx.acts[n] for n in layers],
                retain_graph=j < scores.shape[1] - 1, allow_unused=True
            ) if scores.requires_grad else [None] * len(layers)
        # A score that does not depend on a layer has zero gradient there.
        per_target.append([torch.zeros_like(ctx.acts[n]) if g is None else g
                           for g, n in zip(found, layers)])
    return {n: torch.stack([g[i] for g in per_target], 1) for i, n in enumerate(layers)}


def per_layer(fn: Callable[[CamContext, str], torch.Tensor]
              ) -> Callable[[CamContext], dict[str, torch.Tensor]]:
    """A ``maps`` function from one that computes one layer's map."""
    def maps(ctx: CamContext) -> dict[str, torch.Tensor]:
        return {name: fn(ctx, name) for name in ctx.layers}
    maps.__doc__ = fn.__doc__
    return maps
