"""Feature inversion (Mahendran & Vedaldi, 2015): the image whose activations at a layer
match a given image's, found from a random start with the feature-visualisation
parameterisation and a total-variation prior. What an early layer keeps is nearly the
image itself; a late layer keeps what the network needs, and less of the rest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.devices import DeviceConstant
from ..core.errors import VistoolError
from ..core.hooks import forward_until
from ..core.imageio import deprocess, normalisation
from ..core.layers import resolve_layers
from ..core.progress import Progress, progress_bar
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..drawing import image_grid, png_bytes
from . import objectives as obj
from .optimize import optimize
from .param import make_param
from .transform import Transforms

__all__ = ["Inversion", "invert"]


@dataclass
class Inversion:
    """The result of :func:`invert`.

    Attributes:
        inputs: (N, C, H, W) the images as pictures in [0, 1].
        images: layer -> (N, C, H, W) its reconstructions in [0, 1].
        errors: layer -> (N,) the reconstruction's activations' distance to the image's,
            relative (L2 of the difference over L2 of the image's activations).
        distances: layer -> (N,) the reconstruction's pixel distance to the image, relative.
        history: layer -> (steps, N) the objective at every step (minus the relative
            squared error, minus the prior).

    In a notebook it shows each image beside its reconstructions, layer by layer.
    """

    inputs: torch.Tensor
    images: dict[str, torch.Tensor]
    errors: dict[str, torch.Tensor]
    distances: dict[str, torch.Tensor]
    history: dict[str, torch.Tensor]

    def _repr_png_(self) -> bytes:
        rows = [self.inputs, *self.images.values()]
        return png_bytes(image_grid(torch.stack(rows, 1).flatten(0, 1).cpu(), cols=len(rows)))


def _activations(loaded: LoadedModel, images: torch.Tensor, layer: str) -> torch.Tensor:
    with preserved_state(loaded.model, eval_mode=True), torch.no_grad():
        act = forward_until(loaded.model, images, [layer], gradients=False)[layer]
    if not isinstance(act, torch.Tensor) or act.dim() < 3:
        shape = tuple(act.shape) if isinstance(act, torch.Tensor) else type(act).__name__
        raise VistoolError(f"layer {layer!r} outputs {shape}, not a spatial grid; invert a "
                           "layer with a spatial output ('vistool layers' lists them)")
    return act


def _matching(layer: str, target: torch.Tensor) -> obj.Objective:
    """Minus the squared distance of ``layer``'s output to ``target``, relative to the
    target's squared norm, per image."""
    constant, norm = DeviceConstant(target), DeviceConstant(
        target.flatten(1).pow(2).sum(1).clamp_min(1e-12))

    def fn(acts):
        act = acts[layer]
        return -(act - constant.like(act)).flatten(1).pow(2).sum(1) / norm.like(act)

    return obj.Objective(fn, [layer], f"match({layer})")


def invert(loaded: LoadedModel, images: torch.Tensor, layers: str | Sequence[str], *,
           steps: int = 400, lr: float = 0.2, tv: float = 5e-4, param: str = "fft",
           seed: int = 0, progress: Progress = False) -> Inversion:
    """Reconstruct ``images`` from their activations at each of ``layers``.

    Args:
        loaded: the model (:func:`vistool.load_model`).
        images: preprocessed batch (N, C, H, W) on the model's device.
        layers: a layer with a spatial output, or several (one reconstruction each).
        steps, lr: Adam steps and peak learning rate (warm-up over a tenth of the steps,
            then a cosine down to a tenth).
        tv: the weight of the total-variation prior (smoother images).
        param: ``"fft"`` or ``"pixel"``, as in :func:`~vistool.render_filters`.
        seed: seeds the start images (image i from its own generator).
        progress: a progress bar (True) or a callable, as in :func:`~vistool.render_filters`.

    The network runs only up to each layer, its weights frozen; the model comes back as
    it was. The objective: minus the relative squared distance of the activations, minus
    ``tv`` times the total variation; no random transformations (the reconstruction must
    line up with the image).

    Raises:
        VistoolError: an unknown layer, a layer without a spatial output, ``steps`` or
            ``lr`` not positive.
    """
    layers = [layers] if isinstance(layers, str) else list(layers)
    if steps < 1 or lr <= 0 or tv < 0:
        raise VistoolError(f"`steps={steps}` and `lr={lr}` must be positive and `tv={tv}` "
                           "not negative")
    resolve_layers(loaded.model, layers)
    targets = {layer: _activations(loaded, images, layer) for layer in layers}
    inputs = deprocess(images, loaded.mean, loaded.std).cpu()
    bar = progress_bar(steps * len(layers), "invert", progress)
    result = Inversion(inputs, {}, {}, {}, {})
    try:
        for layer in layers:
            generators = [torch.Generator().manual_seed(seed * 1_000_003 + i)
                          for i in range(len(images))]
            done = optimize(loaded.model, _matching(layer, targets[layer]) - tv *
                            obj.total_variation(), make_param(param, tuple(images.shape[1:]),
                                                              generators),
                            generators, steps, lr, Transforms.none(), loaded.mean, loaded.std,
                            callback=lambda _step, _values: bar.update(), final_lr=lr * 0.1,
                            warmup=steps // 10)
            result.images[layer] = done.images.cpu()
            result.history[layer] = done.history.cpu()
            mean, std = normalisation(loaded.mean, loaded.std, images.device)
            again = _activations(loaded, (done.images.to(images) - mean) / std, layer)
            result.errors[layer] = _relative(again - targets[layer], targets[layer])
            result.distances[layer] = _relative(result.images[layer] - inputs, inputs)
    finally:
        bar.close()
    return result


def _relative(difference: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return (difference.flatten(1).norm(dim=1) /
            reference.flatten(1).norm(dim=1).clamp_min(1e-12)).cpu()
