"""What an optimised image should do, composable with ``+ - *`` and scalars.

An :class:`Objective` maps the captured activations (``acts[layer]``; ``acts["input"]``
is the image itself in [0, 1], ``acts[OUTPUT]`` the model's output) to one value per
image (N,), to be maximised. ``channels`` arguments take one index for every image or
one per image, so a batch renders a different channel in each element. Layers are
captured as their modules output them: a convolution followed by an in-place ReLU is
seen before the ReLU (pre-ReLU, :func:`vistool.record` hands the ReLU a copy), name the
ReLU module for the post-ReLU value.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from ..core.devices import DeviceConstant
from ..core.hooks import OUTPUT
from ..core.imageio import gaussian_blur

__all__ = [
    "INPUT",
    "Objective",
    "blur",
    "channel",
    "class_logit",
    "deepdream",
    "direction",
    "diversity",
    "interpolation",
    "l1",
    "l2",
    "neuron",
    "total_variation",
]

INPUT = "input"
Channels = int | Sequence[int] | torch.Tensor


class Objective:
    """A differentiable score per image: ``fn(acts) -> (N,)``, needing ``layers``.

    ``a + b``, ``a - b``, ``2 * a``, ``-a`` and ``a * b`` build new objectives; the layers
    they need are the union.
    """

    def __init__(self, fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
                 layers: Sequence[str], name: str):
        self.fn, self.layers, self.name = fn, tuple(dict.fromkeys(layers)), name

    def __call__(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.fn(acts)

    def __repr__(self) -> str:
        return f"Objective({self.name})"

    def _combine(self, other, op, symbol: str) -> Objective:
        if isinstance(other, Objective):
            return Objective(lambda acts: op(self(acts), other(acts)),
                             (*self.layers, *other.layers), f"{self.name} {symbol} {other.name}")
        return Objective(lambda acts: op(self(acts), other), self.layers,
                         f"{self.name} {symbol} {other}")

    def __add__(self, other) -> Objective:
        return self._combine(other, torch.add, "+")

    def __sub__(self, other) -> Objective:
        return self._combine(other, torch.sub, "-")

    def __mul__(self, other) -> Objective:
        return self._combine(other, torch.mul, "*")

    def __radd__(self, other) -> Objective:
        return self + other

    def __rsub__(self, other) -> Objective:
        return -self + other

    def __rmul__(self, other) -> Objective:
        return self * other

    def __neg__(self) -> Objective:
        return -1 * self


def _indices(channels: Channels) -> DeviceConstant:
    """The channel index (one, or one per image), copied to the device once."""
    return DeviceConstant(torch.as_tensor(channels).long().reshape(-1))


def _select(act: torch.Tensor, channels: DeviceConstant) -> torch.Tensor:
    """``act[i, channels[i]]`` for every image i: (N, ...) without the channel axis."""
    index = channels.like(act)
    if index.numel() == 1:
        index = index.expand(act.shape[0])
    if index.numel() != act.shape[0]:
        raise ValueError(f"{index.numel()} channels for a batch of {act.shape[0]} images")
    return act[torch.arange(act.shape[0], device=act.device), index]


def channel(layer: str, channels: Channels) -> Objective:
    """Mean activation of channel ``channels[i]`` of ``layer`` over all positions."""
    index = _indices(channels)
    return Objective(lambda acts: _select(acts[layer], index).flatten(1).mean(1), [layer],
                     f"channel({layer}, {channels})")


def neuron(layer: str, channels: Channels, y: int | None = None,
           x: int | None = None) -> Objective:
    """Activation of one position (default: the centre) of channel ``channels[i]``."""

    index = _indices(channels)

    def fn(acts):
        act = _select(acts[layer], index)
        row = act.shape[1] // 2 if y is None else y
        col = act.shape[2] // 2 if x is None else x
        return act[:, row, col]

    return Objective(fn, [layer], f"neuron({layer}, {channels})")


def class_logit(classes: Channels) -> Objective:
    """The model's output (logit) of class ``classes[i]``."""
    index = _indices(classes)
    return Objective(lambda acts: _select(acts[OUTPUT], index), [OUTPUT],
                     f"class_logit({classes})")


def deepdream(layer: str) -> Objective:
    """Mean squared activation of ``layer`` (DeepDream)."""
    return Objective(lambda acts: acts[layer].pow(2).flatten(1).mean(1), [layer],
                     f"deepdream({layer})")


def direction(layer: str, vector: torch.Tensor) -> Objective:
    """Mean cosine similarity between ``layer``'s channel vectors and ``vector`` (C,)."""

    constant = DeviceConstant(vector.detach().clone())

    def fn(acts):
        act = acts[layer]
        target = constant.like(act).reshape(1, -1, *([1] * (act.dim() - 2)))
        return F.cosine_similarity(act, target, dim=1).flatten(1).mean(1)

    return Objective(fn, [layer], f"direction({layer})")


def diversity(layer: str) -> Objective:
    """Minus the mean cosine similarity of each image's Gram matrix to the others' (lucid's
    diversity term); couples the images of a batch."""

    def fn(acts):
        act = acts[layer]
        flat = act.flatten(2)
        gram = F.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
        similarity = gram @ gram.T
        count = act.shape[0]
        others = (similarity.sum(1) - similarity.diagonal()) / max(count - 1, 1)
        return -others

    return Objective(fn, [layer], f"diversity({layer})")


def interpolation(first: Objective, second: Objective) -> Objective:
    """Image i of a batch of n maximises ``(1 - t) * first + t * second`` with
    ``t = i / (n - 1)``: the batch goes from one objective to the other (lucid's channel
    interpolation)."""

    def fn(acts):
        a, b = first(acts), second(acts)
        t = torch.linspace(0, 1, len(a), device=a.device, dtype=a.dtype) if len(a) > 1 \
            else torch.zeros_like(a)
        return (1 - t) * a + t * b

    return Objective(fn, (*first.layers, *second.layers),
                     f"interpolation({first.name}, {second.name})")


def l1(constant: float = 0.5) -> Objective:
    """Mean absolute difference of the image from ``constant`` (a regulariser: subtract it)."""
    return Objective(lambda acts: (acts[INPUT] - constant).abs().flatten(1).mean(1), [INPUT],
                     "l1")


def l2(constant: float = 0.5) -> Objective:
    """Root mean squared difference of the image from ``constant`` (subtract it)."""
    return Objective(lambda acts: (acts[INPUT] - constant).pow(2).flatten(1).mean(1).sqrt(),
                     [INPUT], "l2")


def total_variation() -> Objective:
    """Mean absolute difference of neighbouring pixels (subtract it for smoother images)."""

    def fn(acts):
        image = acts[INPUT]
        dy = (image[:, :, 1:] - image[:, :, :-1]).abs().flatten(1).mean(1)
        dx = (image[:, :, :, 1:] - image[:, :, :, :-1]).abs().flatten(1).mean(1)
        return dx + dy

    return Objective(fn, [INPUT], "total_variation")


def blur(sigma: float = 0.5) -> Objective:
    """Minus the squared distance of the image to its Gaussian-blurred self, without gradient
    through the blur (lucid's ``blur_input_each_step`` as an objective): adding it pulls
    the image towards its blurred version."""

    def fn(acts):
        image = acts[INPUT]
        with torch.no_grad():  # the radius rounds 3·sigma (DeepDream's rounds it up)
            smooth = gaussian_blur(image, sigma, radius=max(1, round(3 * sigma)))
        return -(image - smooth).pow(2).flatten(1).mean(1)

    return Objective(fn, [INPUT], f"blur({sigma})")
