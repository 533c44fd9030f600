"""Gradient and perturbation attributions, through captum.

Saliency, integrated gradients, guided backprop and occlusion are captum's own
implementations; guided Grad-CAM combines captum's guided backprop with vistool's
Grad-CAM (nearest upsampling, as captum's ``GuidedGradCam``). Any method can be smoothed
with captum's ``NoiseTunnel`` (SmoothGrad), seeded for reproducibility.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..core.errors import TargetError, VistoolError, suggestion
from ..core.progress import bar_disable
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..drawing import apply_colormap, image_grid, normalize, png_bytes
from .cam import Targets, _resolve_targets, explain
from .names import ATTRIBUTION_METHODS

__all__ = ["ATTRIBUTION_METHODS", "AttributionResult", "attribute"]


@dataclass
class AttributionResult:
    """The result of :func:`attribute`.

    Attributes:
        maps: (N, H, W) in [0, 1]: absolute attribution, maximum over colour channels.
        raw: the attribution itself, (N, C, H, W), signed.
        targets, scores, probs, logits: as in :class:`~vistool.cam.CamResult` (no topk).
        method: the method; smooth: NoiseTunnel samples (0 for none).

    In a notebook the result shows itself: the maps, colour-mapped, one per image.
    """

    maps: torch.Tensor
    raw: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor
    method: str
    smooth: int

    def _repr_png_(self) -> bytes:
        return png_bytes(image_grid(apply_colormap(self.maps.detach().float().cpu(), "jet")))


@contextlib.contextmanager
def _out_of_place_relus(net: nn.Module) -> Iterator[None]:
    """Guided backprop hooks ReLU modules; captum's backward hooks fail on in-place ones, so
    they run out of place inside the block and get their flag back afterwards."""
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for relu in relus:
        relu.inplace = False
    try:
        yield
    finally:
        for relu in relus:
            relu.inplace = True


class _GuidedGradCam:
    """Guided backprop (captum) times vistool's Grad-CAM raw map, upsampled nearest."""

    def __init__(self, net: nn.Module, layer: str):
        from captum.attr import GuidedBackprop

        self.net, self.layer = net, layer
        self.guided = GuidedBackprop(net)

    def attribute(self, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        cam = explain(self.net, inputs.detach(), "gradcam", targets=target,
                      layer=self.layer).raw[self.layer]
        up = F.interpolate(cam[:, None], size=inputs.shape[2:], mode="nearest")
        return self.guided.attribute(inputs, target=target) * up


@dataclass
class _Setup:
    """What every method's builder gets: the model (``forward``: the model counting its
    forward passes on the progress bar), the batch and the options."""

    net: nn.Module
    forward: nn.Module
    images: torch.Tensor
    layer: str | None
    steps: int
    window: int
    stride: int
    batch_size: int


class _Counted(nn.Module):
    """``net`` advancing ``bar`` by the forward passes per image of each call (captum batches
    integration steps, patches and noisy samples of all N images together)."""

    def __init__(self, net: nn.Module, bar: tqdm, n: int):
        super().__init__()
        self.net, self.bar, self.n = net, bar, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.bar.update(x.shape[0] // self.n)
        return self.net(x)


# One builder per method, all with one signature: the setup in, captum's algorithm and the
# keyword arguments of its ``attribute`` (besides inputs and target) out.


def _saliency(s: _Setup) -> tuple[Any, dict]:
    from captum.attr import Saliency

    return Saliency(s.forward), {"abs": False}


def _integrated_gradients(s: _Setup) -> tuple[Any, dict]:
    from captum.attr import IntegratedGradients

    return IntegratedGradients(s.forward), {
        "n_steps": s.steps, "internal_batch_size": s.batch_size * s.images.shape[0]}


def _guided_backprop(s: _Setup) -> tuple[Any, dict]:
    from captum.attr import GuidedBackprop

    return GuidedBackprop(s.forward), {}


def _guided_gradcam(s: _Setup) -> tuple[Any, dict]:
    layer = s.layer
    if layer is None:
        from ..core.layers import default_layer

        layer = default_layer(s.net, tuple(s.images.shape[1:]))
    return _GuidedGradCam(s.net, layer), {}


def _occlusion(s: _Setup) -> tuple[Any, dict]:
    from captum.attr import Occlusion

    channels = s.images.shape[1]
    return Occlusion(s.forward), {
        "sliding_window_shapes": (channels, s.window, s.window),
        "strides": (channels, s.stride, s.stride), "baselines": 0,
        "perturbations_per_eval": s.batch_size}


_METHODS: dict[str, Callable[[_Setup], tuple[Any, dict]]] = {
    "saliency": _saliency,
    "ig": _integrated_gradients,
    "guided-backprop": _guided_backprop,
    "guided-gradcam": _guided_gradcam,
    "occlusion": _occlusion,
}


def _progress_bar(method: str, images: torch.Tensor, steps: int, window: int, stride: int,
                  smooth: int, progress: bool) -> tqdm:
    """A bar over the forward passes per image that captum runs, shown with ``progress`` for
    the slow methods: ``ig``, ``occlusion`` and any with ``smooth``."""
    if method == "ig":
        per_input = steps
    elif method == "occlusion":  # the unoccluded input, then each patch position
        per_input = 1 + math.prod(math.ceil((size - window) / stride) + 1
                                  for size in images.shape[2:])
    else:
        per_input = 1
    slow = method in ("ig", "occlusion") or smooth > 0
    return tqdm(total=per_input * max(smooth, 1), desc=method, unit="pass",
                disable=bar_disable(progress and slow), leave=False)


def _run(algo: Any, images: torch.Tensor, method: str, smooth: int, noise: float, seed: int,
         kwargs: dict) -> torch.Tensor:
    """``algo`` on a copy of the images or, with ``smooth`` > 0, averaged over that many
    noisy copies (captum's NoiseTunnel, seeded)."""
    inputs = images.detach().clone().requires_grad_(method != "occlusion")
    if smooth <= 0:
        return algo.attribute(inputs, **kwargs)
    if method == "guided-gradcam":
        raise VistoolError("`smooth` is not available for guided-gradcam; smooth "
                           "guided-backprop instead")
    from captum.attr import NoiseTunnel

    span = float(images.max() - images.min()) or 1.0
    devices = [images.device] if images.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return NoiseTunnel(algo).attribute(inputs, nt_type="smoothgrad", nt_samples=smooth,
                                           stdevs=noise * span, **kwargs)


def _result(raw: torch.Tensor, logits: torch.Tensor, index: torch.Tensor, method: str,
            smooth: int) -> AttributionResult:
    maps = normalize(raw.abs().amax(1))
    probs = logits.softmax(1).gather(1, index[:, None])[:, 0]
    return AttributionResult(maps=maps, raw=raw, targets=index,
                             scores=logits.gather(1, index[:, None])[:, 0], probs=probs,
                             logits=logits, method=method, smooth=smooth)


def attribute(
    model: LoadedModel | nn.Module,
    images: torch.Tensor,
    method: str = "saliency",
    targets: Targets = None,
    layer: str | None = None,
    smooth: int = 0,
    noise: float = 0.15,
    steps: int = 50,
    window: int = 16,
    stride: int = 8,
    batch_size: int = 16,
    seed: int = 0,
    progress: bool = False,
) -> AttributionResult:
    """Attribute the predictions of a classifier to input pixels.

    Args:
        model: a :class:`~vistool.zoo.LoadedModel` or an ``nn.Module``.
        images: preprocessed batch (N, C, H, W) on the model's device.
        method: ``saliency`` (|gradient|), ``ig`` (integrated gradients from a zero
            baseline), ``guided-backprop``, ``guided-gradcam`` or ``occlusion``.
        targets: None (predicted class), one index for all images, or one per image.
        layer: the Grad-CAM layer of ``guided-gradcam`` (default: the model's default layer).
        smooth: if > 0, average this many noisy copies (SmoothGrad, captum's NoiseTunnel).
        noise: SmoothGrad noise standard deviation, as a fraction of the batch's value range.
        steps: integration steps of ``ig``.
        window, stride: occlusion patch size and step in pixels (zero patches).
        batch_size: inputs per forward pass for ``ig`` and ``occlusion``.
        seed: seeds the SmoothGrad noise.
        progress: show a progress bar (tqdm, on stderr) for ``ig``, ``occlusion`` and any
            method with ``smooth``, over the forward passes per image; results are the same.

    The model runs in eval mode and gets its state back, as in :func:`vistool.explain`.
    """
    if method not in ATTRIBUTION_METHODS:
        raise VistoolError(f"unknown attribution method {method!r}"
                           + suggestion(method, ATTRIBUTION_METHODS, "methods"))
    if callable(targets):
        raise TargetError("attributions need class indices, not a callable target")
    net = model.model if isinstance(model, LoadedModel) else model
    if method == "guided-gradcam" and layer is None:
        layer = model.default_layer if isinstance(model, LoadedModel) else None
    bar = _progress_bar(method, images, steps, window, stride, smooth, progress)
    with preserved_state(net, eval_mode=True, frozen=True), _out_of_place_relus(net), \
            warnings.catch_warnings(), bar:
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        with torch.no_grad():
            logits = net(images)
        index = _resolve_targets(targets, logits, None)[:, 0]
        algo, kwargs = _METHODS[method](_Setup(
            net=net, forward=_Counted(net, bar, images.shape[0]), images=images, layer=layer,
            steps=steps, window=window, stride=stride, batch_size=batch_size))
        raw = _run(algo, images, method, smooth, noise, seed, {"target": index, **kwargs})
    return _result(raw.detach(), logits, index, method, smooth)
