"""Deep Feature Factorization (Collins et al., 2018): a layer's activations over a batch, as a
(channels x positions) matrix, factorised by non-negative matrix factorisation
(:mod:`vistool.explainers.nmf`) into ``c`` concepts: each concept a channel vector (what the
layer sees) and a map per image (where it is). Each concept's class scores are the layer's
GAP + linear head applied to its channel vector (or any ``head`` given). As
pytorch-grad-cam's ``DeepFeatureFactorization``: each map min-max scaled at the layer's
resolution and resized to the input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import VistoolError
from ..core.hooks import record
from ..core.layout import grid_view
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..drawing import image_grid, normalize, png_bytes
from .cam import _layer_names, linear_head
from .nmf import factorization_of

__all__ = ["Factorization", "concept_picture", "factorize"]


@dataclass
class Factorization:
    """The result of :func:`factorize`.

    Attributes:
        maps: (N, c, H, W): where each concept is in each image: each map min-max scaled
            to [0, 1] at the layer's resolution, then resized to the input's.
        raw: (N, c, h, w): the concepts' weights at the layer's positions.
        concepts: (c, K): each concept as a vector of the layer's K channels.
        scores: (c, classes): the head's output for each concept (None without a head).
        layer: the factorised layer; rounds: the NMF's rounds.
        inputs: the images as pictures (N, 3, H, W) in [0, 1] (None for a bare module).

    In a notebook it shows each image with one colour per concept (:func:`concept_picture`).
    """

    maps: torch.Tensor
    raw: torch.Tensor
    concepts: torch.Tensor
    scores: torch.Tensor | None
    layer: str
    rounds: int
    inputs: torch.Tensor | None = field(default=None, repr=False)

    def _repr_png_(self) -> bytes:
        pictures = self.inputs if self.inputs is not None else torch.zeros(
            (len(self.maps), 3, *self.maps.shape[2:]))
        return png_bytes(image_grid(torch.stack([
            concept_picture(p.float().cpu(), m.float().cpu())
            for p, m in zip(pictures, self.maps)])))


def factorize(model: LoadedModel | nn.Module, images: torch.Tensor, layer: str | None = None,
              concepts: int = 5, head: Callable[[torch.Tensor], torch.Tensor] | None = None,
              max_iter: int = 200, layout: str = "auto",
              reshape: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Factorization:
    """Factorise the activations of ``layer`` for ``images`` into ``concepts`` concepts.

    Args:
        model: a :class:`~vistool.zoo.LoadedModel` or an ``nn.Module``.
        images: preprocessed batch (N, C, H, W) on the model's device.
        layer: the layer; default: the model's default target layer.
        concepts: how many concepts (at most the layer's channels).
        head: (c, K) -> (c, classes), each concept's class scores; default: the linear
            classifier when the layer is followed by global average pooling and it alone
            (:func:`~vistool.explainers.cam.linear_head`), else none.
        max_iter: the NMF's most rounds.
        layout, reshape: how the layer's output holds its grid, as in
            :func:`~vistool.explain` (``"nhwc"``: Swin, ``"tokens"``: ViT).

    Runs in eval mode, no gradients; the model's flags come back and no hook remains.

    Raises:
        VistoolError: ``concepts`` out of range, or a layer without a spatial grid.
    """
    net = model.model if isinstance(model, LoadedModel) else model
    layer = _layer_names(model, net, images, layer)[0]
    with preserved_state(net, eval_mode=True), torch.no_grad(), record(net, layer) as rec:
        net(images)
        if layer not in rec:
            raise VistoolError(f"layer {layer!r} did not run in the forward pass; pick a "
                               "layer that 'vistool layers' lists with a shape")
        act = grid_view(layer, rec[layer], images.shape[2:], layout, reshape).to_grid(
            rec[layer])
        head = head if head is not None else linear_head(net, layer, images)
    return _factorized(model, images, layer, act, concepts, head, max_iter)


def _factorized(model, images, layer, act, concepts, head, max_iter) -> Factorization:
    k = act.shape[1]
    if not 1 <= concepts <= k:
        raise VistoolError(f"`concepts={concepts}` must be between 1 and the layer's {k} "
                           f"channels")
    raw, vectors, scores, rounds = factorization_of(act, concepts, head, max_iter)
    found = Factorization(F.interpolate(normalize(raw).float(), size=tuple(images.shape[2:]),
                                        mode="bilinear", align_corners=False),
                          raw, vectors, scores, layer, rounds)
    if isinstance(model, LoadedModel):
        from ..core.imageio import deprocess

        found.inputs = deprocess(images, model.mean, model.std)
    return found


def concept_picture(picture: torch.Tensor, maps: torch.Tensor, weight: float = 0.3,
                    colors: Sequence[Sequence[float]] | None = None) -> torch.Tensor:
    """One colour per concept on ``picture`` (3, H, W): each pixel takes the colour of the
    concept with the largest map there (``maps`` (c, H, W) in [0, 1]), as bright as that
    map, and ``weight`` of the picture shows through (pytorch-grad-cam's
    ``show_factorization_on_image``; its colours: matplotlib's gist_rainbow)."""
    c = maps.shape[0]
    if colors is None:
        import matplotlib

        rainbow = matplotlib.colormaps["gist_rainbow"]
        colors = [rainbow(i / c)[:3] for i in range(c)]
    palette = torch.tensor(np.asarray(colors, dtype=np.float32)[:, :3])  # (c, 3)
    winner = maps.argmax(0)  # (H, W)
    shown = palette[winner].movedim(-1, 0) * maps.max(0).values[None]
    return (weight * picture + (1 - weight) * shown).clamp(0, 1)
