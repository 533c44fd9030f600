"""Feed-forward style transfer (Johnson, Alahi and Fei-Fei, 2016).

A :class:`TransformerNet` (reflection padding, instance normalisation, residual blocks,
nearest upsampling followed by a convolution instead of transposed convolutions) learns to
render any image in one style in a single forward pass. It is trained against a
:class:`PerceptualLoss` (content and Gram-matrix style losses on a frozen VGG, the
``fast-style`` recipe of ``trainers``) and applied by :func:`stylize` or ``vistool style
--fast MODEL.safetensors IMG...``.

The losses are those of :mod:`vistool.synthesize.style` (Grams divided by C·H·W, means of
squared differences), so their weights mean the same in both methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import VistoolError
from ..core.imageio import normalisation
from ..core.zoo import LoadedModel
from . import objectives
from .objectives import INPUT
from .style import gram_matrix, layer_features, resolve_style_layers

__all__ = ["CONTENT_LAYERS", "MIN_SIZE", "STYLE_LAYERS", "PerceptualLoss", "TransformerNet",
           "as_stylizer", "stylize"]

#: Johnson et al.'s layers of VGG16 (paper names, see ``style.paper_layer_names``).
CONTENT_LAYERS = ("relu2_2",)
STYLE_LAYERS = ("relu1_2", "relu2_2", "relu3_3", "relu4_3")
#: The smallest side :class:`TransformerNet` takes (its 9x9 reflection padding needs 5).
MIN_SIZE = 8


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, norm: bool = True,
          relu: bool = True) -> nn.Sequential:
    """Reflection padding, convolution, optionally instance norm and ReLU."""
    layers: list[nn.Module] = [nn.ReflectionPad2d(kernel // 2),
                               nn.Conv2d(cin, cout, kernel, stride)]
    if norm:
        layers.append(nn.InstanceNorm2d(cout, affine=True))
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class _Residual(nn.Module):
    """x + conv-norm-relu-conv-norm(x)."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_conv(channels, channels, 3),
                                  _conv(channels, channels, 3, relu=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class TransformerNet(nn.Module):
    """Johnson et al.'s image transformation network, for images of any size.

    Three convolutions (9x9, then two 3x3 of stride 2) widen ``width`` -> 4·``width``
    channels, ``blocks`` residual blocks follow, two nearest-neighbour upsamplings (each to
    the size its encoder stage had, so odd sizes come back exactly) with 3x3 convolutions
    and a 9x9 convolution return three channels. Inputs and outputs are RGB in [0, 1]
    (the output is not clamped; :func:`stylize` clamps it).

    Args:
        width: channels of the first layer (Johnson: 32).
        blocks: residual blocks (Johnson: 5).
    """

    def __init__(self, width: int = 32, blocks: int = 5):
        super().__init__()
        self.down = nn.ModuleList([_conv(3, width, 9), _conv(width, 2 * width, 3, 2),
                                   _conv(2 * width, 4 * width, 3, 2)])
        self.residual = nn.Sequential(*[_Residual(4 * width) for _ in range(blocks)])
        self.up = nn.ModuleList([_conv(4 * width, 2 * width, 3), _conv(2 * width, width, 3)])
        self.out = _conv(width, 3, 9, norm=False, relu=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes = []
        for layer in self.down:
            sizes.append(x.shape[-2:])
            x = layer(x)
        x = self.residual(x)
        for layer, size in zip(self.up, sizes[:0:-1]):  # back to stage 2's size, then 1's
            x = layer(F.interpolate(x, size=tuple(size), mode="nearest"))
        return self.out(x)


class PerceptualLoss:
    """Johnson et al.'s losses of generated images against their inputs: content (features
    at ``content_layers``), style (Grams at ``style_layers`` against the styles' blended
    Grams, computed once) and total variation, each a mean over the batch.

    The loss network is this object's own: it is put in eval mode and frozen
    (``requires_grad_(False)``) for good, so training the transformer never writes a
    gradient into it. Use :meth:`to` to move it with its targets.

    Args:
        loss_net: the network (:func:`vistool.load_model`, VGG16 as in the paper); its
            mean/std normalise the images inside.
        styles: style images (1, 3, h, w) in [0, 1].
        style_weights: one weight per style, blending their Grams (default equal).
        content_layers, style_layers: paper names (``relu2_2``) or module names.
        content_weight, style_weight, tv_weight: the weights of the three losses.
    """

    def __init__(self, loss_net: LoadedModel, styles: Sequence[torch.Tensor],
                 style_weights: Sequence[float] | None = None,
                 content_layers: Sequence[str] = CONTENT_LAYERS,
                 style_layers: Sequence[str] = STYLE_LAYERS, content_weight: float = 1.0,
                 style_weight: float = 1e5, tv_weight: float = 0.0):
        if not styles:
            raise VistoolError("no style image given; give at least one (`styles`)")
        blend = [1.0] * len(styles) if style_weights is None else list(style_weights)
        if len(blend) != len(styles) or min(blend) < 0 or sum(blend) <= 0:
            raise VistoolError(f"style weights {blend} do not fit {len(styles)} style "
                               "image(s): give one non-negative weight per style")
        self.model = loss_net.model.eval().requires_grad_(False)
        device = loss_net.device
        self.mean, self.std = normalisation(loss_net.mean, loss_net.std, device)
        self.content_layers = resolve_style_layers(self.model, content_layers)
        self.style_layers = resolve_style_layers(self.model, style_layers)
        self.weights = (content_weight, style_weight, tv_weight)
        with torch.no_grad():
            grams = [[gram_matrix(f[name]) for name in self.style_layers]
                     for f in (self._features(s.float().to(device)) for s in styles)]
        self.grams = [sum(w / sum(blend) * g[i] for w, g in zip(blend, grams))
                      for i in range(len(self.style_layers))]

    def _features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        features = layer_features(self.model, (images - self.mean) / self.std,
                                  [*self.content_layers, *self.style_layers])
        return {name: value.float() for name, value in features.items()}

    def to(self, device: torch.device | str) -> PerceptualLoss:
        """Move the loss network and the targets to ``device``; returns self."""
        self.model.to(device)
        self.mean, self.std = self.mean.to(device), self.std.to(device)
        self.grams = [g.to(device) for g in self.grams]
        return self

    def __call__(self, generated: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """(4,) the weighted losses total, content, style and tv of ``generated`` (N, 3, H, W)
        against the content of ``inputs`` (N, 3, H, W), both in [0, 1]."""
        with torch.no_grad():
            targets = self._features(inputs)
        feats = self._features(generated)
        zero = generated.new_zeros(())
        content = sum((F.mse_loss(feats[name], targets[name])
                       for name in self.content_layers), zero)
        style = sum((F.mse_loss(gram_matrix(feats[name]), target.expand(len(generated), -1, -1))
                     for name, target in zip(self.style_layers, self.grams)), zero)
        tv = objectives.total_variation()({INPUT: generated}).mean()
        cw, sw, tw = self.weights
        parts = torch.stack([cw * content, sw * style, tw * tv])
        return torch.cat([parts.sum()[None], parts])


def as_stylizer(loaded: LoadedModel) -> TransformerNet:
    """The :class:`TransformerNet` of ``loaded`` (a ``fast-style`` checkpoint opened with
    :func:`vistool.load_model`).

    Raises:
        VistoolError: the model is something else; the message names what it is.
    """
    if isinstance(loaded.model, TransformerNet):
        return loaded.model
    what = loaded.metadata.get("recipe") or loaded.metadata.get("arch")
    kind = f"a {what} checkpoint" if what else f"a {type(loaded.model).__name__}"
    raise VistoolError(f"{loaded.spec} is {kind}, not a fast-style model; train one with "
                       "'vistool train fast-style --style IMG --data-dir DIR'")


@torch.no_grad()
def stylize(model: TransformerNet, images: torch.Tensor) -> torch.Tensor:
    """``images`` (N, 3, H, W) in [0, 1] rendered in the model's style, one forward pass,
    the same size, clamped to [0, 1]. The model's train/eval flag is restored.

    Raises:
        VistoolError: images that are not (N, 3, H, W) or smaller than :data:`MIN_SIZE`.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise VistoolError(f"images must be (N, 3, H, W) in [0, 1], got {tuple(images.shape)}")
    if min(images.shape[-2:]) < MIN_SIZE:
        raise VistoolError(f"an image of {images.shape[-2]}x{images.shape[-1]} pixels is too "
                           f"small to stylise; give at least {MIN_SIZE} pixels a side")
    was_training = model.training
    try:
        device = next(model.parameters()).device
        return model.eval()(images.to(device, torch.float32)).clamp(0, 1)
    finally:
        model.train(was_training)
