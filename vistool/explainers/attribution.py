"""Gradient and perturbation attributions, through captum.

Saliency, integrated gradients, guided backprop and occlusion are captum's own
implementations; guided Grad-CAM combines captum's guided backprop with vistool's
Grad-CAM (nearest upsampling, as captum's ``GuidedGradCam``). Any method can be smoothed
with captum's ``NoiseTunnel`` (SmoothGrad), seeded for reproducibility.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import TargetError, VistoolError, suggestion
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..render import normalize
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
    """

    maps: torch.Tensor
    raw: torch.Tensor
    targets: torch.Tensor
    scores: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor
    method: str
    smooth: int


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

    The model runs in eval mode and gets its state back, as in :func:`vistool.explain`.
    """
    from captum.attr import IntegratedGradients, NoiseTunnel, Occlusion, Saliency

    if method not in ATTRIBUTION_METHODS:
        raise VistoolError(f"unknown attribution method {method!r}"
                           + suggestion(method, ATTRIBUTION_METHODS, "methods"))
    if callable(targets):
        raise TargetError("attributions need class indices, not a callable target")
    net = model.model if isinstance(model, LoadedModel) else model
    if method == "guided-gradcam" and layer is None:
        layer = model.default_layer if isinstance(model, LoadedModel) else None
    with preserved_state(net, eval_mode=True, frozen=True), _out_of_place_relus(net), \
            warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        with torch.no_grad():
            logits = net(images)
        index = _resolve_targets(targets, logits, None)[:, 0]
        kwargs: dict = {"target": index}
        if method == "saliency":
            algo = Saliency(net)
            kwargs["abs"] = False
        elif method == "ig":
            algo = IntegratedGradients(net)
            kwargs.update(n_steps=steps, internal_batch_size=batch_size * images.shape[0])
        elif method == "guided-backprop":
            from captum.attr import GuidedBackprop

            algo = GuidedBackprop(net)
        elif method == "guided-gradcam":
            if layer is None:
                from ..core.layers import default_layer

                layer = default_layer(net, tuple(images.shape[1:]))
            algo = _GuidedGradCam(net, layer)
        else:
            algo = Occlusion(net)
            channels = images.shape[1]
            kwargs.update(sliding_window_shapes=(channels, window, window),
                          strides=(channels, stride, stride), baselines=0,
                          perturbations_per_eval=batch_size)
        inputs = images.detach().clone().requires_grad_(method != "occlusion")
        if smooth > 0:
            if method == "guided-gradcam":
                raise VistoolError("--smooth is not available for guided-gradcam; smooth "
                                   "guided-backprop instead")
            span = float(images.max() - images.min()) or 1.0
            devices = [images.device] if images.device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                raw = NoiseTunnel(algo).attribute(inputs, nt_type="smoothgrad",
                                                  nt_samples=smooth, stdevs=noise * span,
                                                  **kwargs)
        else:
            raw = algo.attribute(inputs, **kwargs)
    raw = raw.detach()
    maps = normalize(raw.abs().amax(1))
    probs = logits.softmax(1).gather(1, index[:, None])[:, 0]
    return AttributionResult(maps=maps, raw=raw, targets=index,
                             scores=logits.gather(1, index[:, None])[:, 0], probs=probs,
                             logits=logits, method=method, smooth=smooth)


