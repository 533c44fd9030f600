"""Class activation maps: CAM, Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM,
Score-CAM, Eigen-CAM and Ablation-CAM, for one or several layers.

Every method reduces to a layer-resolution map computed from the layer's activations
``A`` (N, K, h, w) and, for the gradient methods, ``G = d score / d A``:

* ``G`` comes from ``torch.autograd.grad`` to the captured layer output (``vistool.hooks``):
  no backward below the layer and no parameter ``.grad`` touched.
* When the layer is followed only by global average pooling and a linear classifier
  (checked once per model and layer by a probe, see :func:`linear_head`), ``G`` is known
  in closed form, ``W[target] / (h * w)``, and no backward pass runs at all.
* ``topk=k`` explains k classes from one forward pass.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..core.errors import TargetError, VistoolError, suggestion
from ..core.hooks import record, replaced_output
from ..core.imageio import deprocess
from ..core.layers import default_layer as find_default_layer
from ..core.layout import GridView, ReshapeView, grid_view
from ..core.progress import bar_disable
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..render import apply_colormap, image_grid, normalize, overlay, png_bytes
from .inference import inference_copy, many_forwards_batch
from .names import CAM_METHODS, GRADIENT_METHODS

__all__ = [
    "CAM_METHODS",
    "GRADIENT_METHODS",
    "CamResult",
    "ConstantMapWarning",
    "explain",
    "fast_copy",
    "linear_head",
]


Targets = int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


class ConstantMapWarning(UserWarning):
    """An explanation map was constant (e.g. all gradients zero) and is returned as zeros."""


@dataclass
class CamResult:
    """The result of :func:`explain`.

    Attributes:
        maps: (N, H, W) at input resolution in [0, 1]; (N, k, H, W) with ``topk=k``.
        raw: per layer, the unnormalised layer-resolution map (N, h, w) or (N, k, h, w),
            after the method's ReLU.
        targets: explained class indices (N,) or (N, k); None for a callable target.
        scores: the explained outputs (logits or the callable's values), shaped like targets.
        probs: softmax probabilities of the targets (None for a callable target).
        logits: the model output (N, classes).
        layers: the explained layers; method: the method; closed_form: whether the
            gradients came from the closed form of a GAP + linear head.
        inputs: the explained images as pictures (N, 3, H, W) in [0, 1] (the model's
            normalisation undone; None when ``explain`` was given a bare ``nn.Module``).

    In a notebook the result shows itself: each image with its map overlaid (one row per
    image, one column per target with ``topk``; the maps alone without ``inputs``).
    """

    maps: torch.Tensor
    raw: dict[str, torch.Tensor]
    targets: torch.Tensor | None
    scores: torch.Tensor
    probs: torch.Tensor | None
    logits: torch.Tensor
    layers: list[str]
    method: str
    closed_form: bool
    inputs: torch.Tensor | None = field(default=None, repr=False)

    def _repr_png_(self) -> bytes:
        maps = self.maps.detach().float().cpu()
        maps = maps[:, None] if maps.dim() == 3 else maps  # (N, k, H, W)
        if self.inputs is None:
            tiles = apply_colormap(maps, "jet")
        else:
            pictures = self.inputs.detach().float().cpu()
            tiles = torch.stack([torch.stack([overlay(pictures[i], m) for m in row])
                                 for i, row in enumerate(maps)])
        return png_bytes(image_grid(tiles.flatten(0, 1), cols=maps.shape[1]))


@dataclass
class _Context:
    """What every method's map function gets: the request and one forward pass's results."""

    net: nn.Module
    images: torch.Tensor
    method: str
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


# ---------------------------------------------------------------------------------------------
# The closed form of a global-average-pool + linear head

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(model: nn.Module, key: tuple, compute: Callable[[], object]):
    """Per-model memo (dropped with the model) for dry-run results: heads, default layers."""
    memo = _CACHE.setdefault(model, {})
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def linear_head(model: nn.Module, layer: str, sample: torch.Tensor) -> nn.Linear | None:
    """The linear classifier ``L`` if ``model(x) == L(mean_hw(layer(x)))`` as a function of the
    layer output, else None. ``sample`` is one input batch (only its shape, dtype and
    device matter).

    Found with two forward passes, cached per model, layer and input shape: one finds the
    ``nn.Linear`` whose output is the model's output; one replaces the layer's output by
    random values (negative ones included, so a ReLU or any non-linearity in between is
    caught) and checks that the model's output is that linear map of their spatial mean.
    """
    return _cached(model, _head_key(layer, sample),
                   lambda: _probe_linear_head(model, layer, sample[:1]))


def _head_key(layer: str, sample: torch.Tensor) -> tuple:
    return ("head", layer, tuple(sample.shape[1:]), sample.dtype, str(sample.device))


def _probe_linear_head(model: nn.Module, layer: str, sample: torch.Tensor) -> nn.Linear | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        return None
    x = torch.zeros((2, *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
    with torch.no_grad(), preserved_state(model, eval_mode=True):
        with record(model, [layer, *names]) as rec:
            out = model(x)
        if not isinstance(out, torch.Tensor) or layer not in rec:
            return None
        act = rec[layer]
        if not isinstance(act, torch.Tensor) or act.dim() != 4:
            return None
        modules = dict(model.named_modules())
        head = next((modules[n] for n in names if n in rec and rec[n].shape == out.shape
                     and torch.equal(rec[n], out)), None)
        if head is None or head.in_features != act.shape[1] or not head.weight.any():
            return None  # a zero head (torchvision's untrained ViT) makes every output equal
        generator = torch.Generator(device=act.device).manual_seed(0)
        probe = torch.randn(act.shape, generator=generator, device=act.device, dtype=act.dtype)
        with replaced_output(model, layer, lambda _out: probe.clone()):  # in-place ops after
            probed = model(x)
        expected = head(probe.mean((2, 3)))
        if probed.shape != expected.shape or not torch.allclose(probed, expected, rtol=1e-4,
                                                                 atol=1e-5):
            return None
    return head


# ---------------------------------------------------------------------------------------------
# Targets


def _resolve_targets(targets: Targets, logits: torch.Tensor, topk: int | None) -> torch.Tensor:
    """Class indices (N, k) to explain."""
    n, classes = logits.shape
    if topk is not None:
        if targets is not None:
            raise TargetError("give either targets or topk, not both")
        if not 1 <= topk <= classes:
            raise TargetError(f"topk must be between 1 and {classes}, not {topk}")
        return logits.topk(topk, dim=1).indices
    if targets is None:
        return logits.argmax(1, keepdim=True)
    index = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    if index.numel() == 1:
        index = index.expand(n)
    if index.numel() != n:
        raise TargetError(f"got {index.numel()} targets for {n} images; give one per image")
    bad = index[(index < 0) | (index >= classes)]
    if bad.numel():
        raise TargetError(f"class index {int(bad[0])} is out of range; the model has {classes} "
                          f"classes (0..{classes - 1})")
    return index[:, None]


# ---------------------------------------------------------------------------------------------
# Per-method maps from activations A (N, K, h, w) and gradients G (N, k, K, h, w or 1, 1)


def _weighted(weights: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """sum_K weights[n, k, K] * act[n, K] -> (N, k, h, w), through ReLU."""
    return torch.einsum("nkc,nchw->nkhw", weights, act).clamp_min(0)


def _from_gradients(method: str, act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    a = act[:, None]  # (N, 1, K, h, w)
    if method in ("gradcam", "cam"):
        return _weighted(grad.mean((3, 4)), act)
    if method == "hirescam":
        return (grad * a).sum(2).clamp_min(0)
    if method == "xgradcam":
        denom = act.sum((2, 3))[:, None, :, None, None] + 1e-7
        return _weighted((grad * a / denom).sum((3, 4)), act)
    if method == "gradcam++":
        g2 = grad.pow(2)
        g3 = g2 * grad
        sum_a = act.sum((2, 3))[:, None, :, None, None]
        alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
        alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
        weights = (grad.clamp_min(0) * alpha).expand(-1, -1, -1, *act.shape[2:]).sum((3, 4))
        return _weighted(weights, act)
    if method == "layercam":
        return (grad.clamp_min(0) * a).sum(2).clamp_min(0)
    raise AssertionError(method)


def _eigencam(act: torch.Tensor) -> torch.Tensor:
    """First principal component of the activations (class-agnostic), sign-aligned with the
    channel sum so that strong activations map to high values."""
    n, k, h, w = act.shape
    flat = act.reshape(n, k, h * w).transpose(1, 2).float()  # (N, hw, K)
    centred = flat - flat.mean(1, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:, 0, :, None]  # (N, hw, 1)
    sign = torch.where((proj[..., 0] * flat.sum(2)).sum(1) < 0, -1.0, 1.0)
    return (proj[..., 0] * sign[:, None]).reshape(n, 1, h, w).clamp_min(0).to(act.dtype)


def _select_channels(act: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Indices of the channels to use for one image's activation (K, h, w)."""
    if channels is None or channels >= act.shape[0]:
        return torch.arange(act.shape[0], device=act.device)
    return act.flatten(1).var(1).topk(channels).indices


def _scorecam(ctx: _Context, act: torch.Tensor) -> torch.Tensor:
    """Score-CAM: weight channels by the softmax over channels of the target logits of the
    input masked by each upsampled, min-max scaled channel. Masked forwards are batched;
    constant channels share one forward (their mask is zero)."""
    images, targets, channels = ctx.images, ctx.index, ctx.channels
    n, k_targets = targets.shape
    net = inference_copy(ctx.net, fuse=True, sample=images[:1])
    batch_size = many_forwards_batch(net, images, ctx.batch_size)
    out = act.new_zeros((n, k_targets, *act.shape[2:]))
    size = images.shape[2:]
    bar = tqdm(total=n * act.shape[1] if channels is None else n * min(channels, act.shape[1]),
               desc="score-cam", disable=bar_disable(ctx.progress), leave=False)
    for i in range(n):
        chosen = _select_channels(act[i], channels)
        a = act[i, chosen]  # (K', h, w)
        up = F.interpolate(a[None], size=size, mode="bilinear", align_corners=True)[0]
        lo, hi = up.flatten(1).aminmax(dim=1)
        varying = (hi > lo).nonzero()[:, 0]
        scores = act.new_empty((len(chosen), k_targets))
        x = images[i]
        with torch.inference_mode():
            for start in range(0, len(varying), batch_size):
                index = varying[start:start + batch_size]
                masks = up[index].sub_(lo[index, None, None]).div_(
                    (hi[index] - lo[index] + 1e-8)[:, None, None])
                masked = torch.empty((len(index), *x.shape), dtype=x.dtype, device=x.device,
                                     memory_format=torch.channels_last)
                torch.mul(x[None], masks[:, None], out=masked)
                logits = net(masked)
                scores[index] = logits[:, targets[i]].to(act.dtype)
                bar.update(len(index))
            if len(varying) < len(chosen):
                constant = torch.ones(len(chosen), dtype=torch.bool, device=act.device)
                constant[varying] = False
                logits = net(torch.zeros_like(x)[None])
                scores[constant] = logits[:, targets[i]].to(act.dtype)
                bar.update(int(constant.sum()))
        weights = scores.softmax(0)  # (K', k)
        out[i] = torch.einsum("ck,chw->khw", weights, a).clamp_min(0)
    bar.close()
    return out


def _ablationcam(ctx: _Context, layer: str, act: torch.Tensor) -> torch.Tensor:
    """Ablation-CAM: weight channel c by the relative drop of the target score when channel c
    of the layer output is zeroed. With a GAP + linear head the drop is W[t, c] * mean(A_c)."""
    n, k_channels = act.shape[:2]
    images, targets, head = ctx.images, ctx.index, ctx.heads.get(layer)
    view = ctx.views[layer]
    base = ctx.logits.gather(1, targets)  # (N, k)
    if head is not None:
        drops = head.weight[targets] * act.mean((2, 3))[:, None, :]  # (N, k, K)
    else:
        net = inference_copy(ctx.net, fuse=False)
        batch_size = many_forwards_batch(net, images, ctx.batch_size)
        drops = act.new_empty((n, targets.shape[1], k_channels))
        bar = tqdm(total=n * k_channels, desc="ablation-cam", disable=bar_disable(ctx.progress),
                   leave=False)
        for i in range(n):
            for start in range(0, k_channels, batch_size):
                chans = torch.arange(start, min(start + batch_size, k_channels),
                                     device=act.device)
                ablated = act[i].expand(len(chans), -1, -1, -1).clone()
                ablated[torch.arange(len(chans), device=act.device), chans] = 0
                with torch.inference_mode(), replaced_output(
                        net, layer, lambda o, a=ablated: view.from_grid(a, o)):
                    out = net(images[i].expand(len(chans), -1, -1, -1))
                drops[i, :, chans] = (base[i][None] - out[:, targets[i]]).T.to(act.dtype)
                bar.update(len(chans))
        bar.close()
    weights = drops / (base[..., None] + torch.where(base[..., None] >= 0, 1e-7, -1e-7))
    return _weighted(weights, act)


# ---------------------------------------------------------------------------------------------
# One function per method, all with one signature: the context in, the raw map per layer out


def _closed_form_gradients(ctx: _Context) -> dict[str, torch.Tensor]:
    """d score / d A per layer from the GAP + linear head, (N, k, K, 1, 1): W[target] / (h * w),
    no backward pass."""
    grads = {}
    for name in ctx.layers:
        h, w = ctx.acts[name].shape[2:]
        grads[name] = (ctx.heads[name].weight[ctx.index] / (h * w))[..., None, None].detach()
    return grads


def _autograd_gradients(ctx: _Context) -> dict[str, torch.Tensor]:
    """d score / d A per layer, (N, k, K, h, w): one ``autograd.grad`` per target to all
    layers at once."""
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


def _gradient_maps(ctx: _Context) -> dict[str, torch.Tensor]:
    """CAM and the gradient methods: a map from the activations and their gradients."""
    grads = _closed_form_gradients(ctx) if ctx.closed_form else _autograd_gradients(ctx)
    return {name: _from_gradients(ctx.method, _grid(ctx, name),
                                  ctx.views[name].to_grid(grads[name].detach(), lead=2))
            for name in ctx.layers}


def _grid(ctx: _Context, name: str) -> torch.Tensor:
    """Layer ``name``'s detached output as (N, K, h, w)."""
    return ctx.views[name].to_grid(ctx.acts[name].detach())


def _eigencam_maps(ctx: _Context) -> dict[str, torch.Tensor]:
    k = ctx.scores.shape[1]
    return {name: _eigencam(_grid(ctx, name)).expand(-1, k, -1, -1) for name in ctx.layers}


def _scorecam_maps(ctx: _Context) -> dict[str, torch.Tensor]:
    return {name: _scorecam(ctx, _grid(ctx, name)) for name in ctx.layers}


def _ablationcam_maps(ctx: _Context) -> dict[str, torch.Tensor]:
    return {name: _ablationcam(ctx, name, _grid(ctx, name)) for name in ctx.layers}


_MAPS: dict[str, Callable[[_Context], dict[str, torch.Tensor]]] = {
    "cam": _gradient_maps,
    **dict.fromkeys(GRADIENT_METHODS, _gradient_maps),
    "scorecam": _scorecam_maps,
    "eigencam": _eigencam_maps,
    "ablationcam": _ablationcam_maps,
}


# ---------------------------------------------------------------------------------------------
# explain(): check the request, probe the head, one forward pass, the method's maps, the result


def _layer_names(model: LoadedModel | nn.Module, net: nn.Module, images: torch.Tensor,
                 layer: str | Sequence[str] | None) -> list[str]:
    if layer is None:
        shape = tuple(images.shape[1:])
        layer = (model.default_layer if isinstance(model, LoadedModel) else _cached(
            net, ("default_layer", shape), lambda: find_default_layer(net, shape)))
    return [layer] if isinstance(layer, str) else list(layer)


def _check_request(method: str, images: torch.Tensor, targets: Targets,
                   topk: int | None) -> None:
    if images.dim() != 4:
        raise VistoolError(f"expected a batch (N, C, H, W), got shape {tuple(images.shape)}")
    if callable(targets) and topk is not None:
        raise TargetError("topk needs class indices, not a callable target")
    if callable(targets) and method in ("cam", "ablationcam", "scorecam"):
        raise TargetError(f"{method} needs class indices, not a callable target")


def _heads(net: nn.Module, images: torch.Tensor, layers: list[str], method: str,
           closed_form: bool | None, targets: Targets) -> tuple[dict[str, nn.Linear | None], bool]:
    """The probed GAP + linear head per layer (empty when not probed; Ablation-CAM uses each
    one found) and whether the closed form applies to every layer."""
    if not (method == "cam" or (closed_form is not False and not callable(targets)
                                and method in (*GRADIENT_METHODS, "ablationcam"))):
        return {}, False
    heads = {name: linear_head(net, name, images) for name in layers}
    missing = [name for name, head in heads.items() if head is None]
    if missing and (method == "cam" or closed_form):
        raise VistoolError(
            f"layer {missing[0]!r} is not followed by global average pooling and a "
            "linear classifier alone, so CAM's closed form does not apply; use gradcam")
    return heads, not missing


def _scores(output: torch.Tensor, targets: Targets, topk: int | None,
            n: int) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The explained class indices (N, k) (None for a callable target), their scores (N, k)
    and the logits (the detached output)."""
    if callable(targets):
        scores = targets(output)
        if scores.shape != (n,):
            raise TargetError(f"the target callable returned shape {tuple(scores.shape)}; "
                              f"it must return one score per image ({n},)")
        return None, scores[:, None], output.detach()
    if output.dim() != 2:
        raise TargetError(f"the model output has shape {tuple(output.shape)}; give a "
                          "callable target that returns one score per image")
    logits = output.detach()
    index = _resolve_targets(targets, logits, topk)
    return index, output.gather(1, index), logits


def _forward(net: nn.Module, images: torch.Tensor, layers: list[str], targets: Targets,
             topk: int | None, gradients: bool, layout: str, reshape) -> tuple[
                 dict[str, torch.Tensor], dict[str, GridView | ReshapeView],
                 torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """One forward pass: the layers' outputs (in the autograd graph with ``gradients``) and
    how each maps to (N, K, h, w), the class indices, the scores and the logits."""
    with torch.set_grad_enabled(gradients), record(net, layers, gradients=gradients) as rec:
        output = net(images)
        index, scores, logits = _scores(output, targets, topk, images.shape[0])
    missing = [name for name in layers if name not in rec]
    if missing:
        raise VistoolError(f"layer {missing[0]!r} did not run in the forward pass; "
                           "pick a layer that 'vistool layers' lists with a shape")
    acts = {name: rec[name] for name in layers}
    views = {name: grid_view(name, act, images.shape[2:], layout, reshape)
             for name, act in acts.items()}
    return acts, views, index, scores, logits


def _upsample(raw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    n, k, h, w = raw.shape
    return F.interpolate(raw.reshape(n * k, 1, h, w).float(), size=tuple(size), mode="bilinear",
                         align_corners=False).reshape(n, k, *size)


def _result(ctx: _Context, raw: dict[str, torch.Tensor], topk: int | None,
            model: LoadedModel | nn.Module) -> CamResult:
    """Fuse the per-layer maps at input resolution, warn about constant ones (for the caller
    of :func:`explain`), drop the k axis without ``topk`` and keep the inputs as pictures
    (when ``model`` says how they were normalised)."""
    size = ctx.images.shape[2:]
    fused = torch.stack([normalize(_upsample(r, size)) for r in raw.values()]).mean(0)
    maps = normalize(fused) if len(raw) > 1 else fused
    constant = sum(int((r.flatten(2).amax(-1) == r.flatten(2).amin(-1)).sum())
                   for r in raw.values())
    if constant:
        warnings.warn(f"{ctx.method}: {constant} map(s) are constant (e.g. zero gradients) "
                      "and are returned as zeros", ConstantMapWarning, stacklevel=3)
    index = ctx.index
    probs = None if index is None else ctx.logits.softmax(1).gather(1, index)

    def first(t: torch.Tensor | None) -> torch.Tensor | None:
        return t[:, 0] if topk is None and t is not None else t

    return CamResult(maps=first(maps), raw={n: first(r) for n, r in raw.items()},
                     targets=first(index), scores=first(ctx.scores.detach()), probs=first(probs),
                     logits=ctx.logits, layers=ctx.layers, method=ctx.method,
                     closed_form=ctx.closed_form, inputs=deprocess(
                         ctx.images, model.mean, model.std) if isinstance(
                         model, LoadedModel) else None)


def explain(
    model: LoadedModel | nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    targets: Targets = None,
    layer: str | Sequence[str] | None = None,
    topk: int | None = None,
    closed_form: bool | None = None,
    batch_size: int | None = None,
    channels: int | None = None,
    progress: bool = False,
    layout: str = "auto",
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> CamResult:
    """Explain the predictions of a classifier for a batch of images with a class activation map.

    Args:
        model: a :class:`~vistool.zoo.LoadedModel` or an ``nn.Module``.
        images: preprocessed batch (N, C, H, W) on the model's device.
        method: one of ``CAM_METHODS``: ``cam``, ``gradcam``, ``gradcam++``, ``xgradcam``,
            ``hirescam``, ``layercam``, ``scorecam``, ``eigencam``, ``ablationcam``.
        targets: None (the predicted class), a class index for all images, one index per
            image, or a callable mapping the model output to one score per image (for
            non-classifier heads).
        layer: a layer name, or several to fuse (mean of the per-layer normalised maps);
            default: the model's default target layer.
        topk: explain the k highest-scoring classes of each image (maps (N, k, H, W)).
        closed_form: use the closed form of a GAP + linear head: None detects it, False
            always back-propagates, True requires it. ``cam`` always requires it.
        batch_size: at most this many masked forwards per batch (``scorecam``, ``ablationcam``;
            None: sized to the CPU or GPU memory, :func:`~vistool.inference.many_forwards_batch`).
        channels: ``scorecam``: only the k highest-variance channels (Faster Score-CAM).
        progress: show a progress bar for the many-forward methods.
        layout: ``"auto"``, ``"nchw"``, ``"nhwc"`` (Swin) or ``"tokens"`` (ViT): how the
            layers hold their grid (:func:`vistool.core.layout.grid_view`); ``reshape``, a
            callable layer output -> (N, C, H, W), for any other (not with ablationcam).

    Runs in eval mode; the flags, ``requires_grad`` and ``.grad`` come back; no hook remains.

    Raises:
        TargetError: a target index is out of range, or targets do not match the batch.
        VistoolError: an unknown method, ``cam`` on a model without a GAP + linear head.
    """
    if method not in CAM_METHODS:
        raise VistoolError(f"unknown CAM method {method!r}" + suggestion(method, CAM_METHODS,
                                                                            "methods"))
    net = model.model if isinstance(model, LoadedModel) else model
    layers = _layer_names(model, net, images, layer)
    _check_request(method, images, targets, topk)
    with preserved_state(net, eval_mode=True, frozen=True):
        heads, closed = _heads(net, images, layers, method, closed_form, targets)
        gradients = method in GRADIENT_METHODS and not closed
        acts, views, index, scores, logits = _forward(net, images, layers, targets, topk,
                                                      gradients, layout, reshape)
        ctx = _Context(net=net, images=images, method=method, layers=layers, acts=acts,
                       views=views, index=index, scores=scores, logits=logits, heads=heads,
                       closed_form=closed, batch_size=batch_size, channels=channels,
                       progress=progress)
        raw = _MAPS[method](ctx)
    return _result(ctx, raw, topk, model)


def fast_copy(model: LoadedModel | nn.Module, method: str, layers: Sequence[str],
              sample: torch.Tensor) -> nn.Module:
    """A private copy of ``model`` that :func:`explain` explains like the model (equal up to
    float rounding) but faster, for runs over many batches like ``sample``: batch norm
    folded, channels-last and, where no backward pass runs (``cam``, ``eigencam`` and the
    gradient methods on a layer with the closed form), oneDNN-fused convolutions
    (:func:`~vistool.explainers.inference.inference_copy`, keeping ``layers``). Building it
    costs a few forward passes of one image. Score-CAM and Ablation-CAM make such copies
    themselves: they get the model itself.
    """
    net = model.model if isinstance(model, LoadedModel) else model
    if method in ("scorecam", "ablationcam"):
        return net
    with preserved_state(net, eval_mode=True, frozen=True), torch.no_grad():
        heads = {name: linear_head(net, name, sample) for name in layers} if (
            method in ("cam", *GRADIENT_METHODS)) else {}
        forward_only = method == "eigencam" or (bool(heads) and None not in heads.values())
        fast = inference_copy(net, fuse=True, sample=sample[:1] if forward_only else None,
                              keep=list(layers))
    names = {module: name for name, module in net.named_modules()}
    for layer, head in heads.items():  # the copy has the same head: no probe of its own
        with contextlib.suppress(AttributeError):
            copied = None if head is None else fast.get_submodule(names[head])
            _cached(fast, _head_key(layer, sample), lambda h=copied: h)
    return fast
