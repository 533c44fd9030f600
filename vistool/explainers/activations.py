"""Activations of named layers for a batch of images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import LayerError
from ..core.hooks import record
from ..core.layout import detect, grid_view
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..drawing import channel_grid, png_bytes

__all__ = ["ActivationResult", "activations", "channel_stats"]


@dataclass
class ActivationResult:
    """Captured activations: ``layers[name]`` is (N, C, H, W) for every layer whose output
    is a spatial grid — channels-last and token outputs are rearranged to it, ``layouts``
    says what each was — and the output as it is otherwise (e.g. (N, F) of a linear layer).

    ``logits`` is the model output for the batch (N, classes), kept for labelling.

    In a notebook the result shows itself: the first image's channels of the first layer
    (at most 64, each scaled on its own), as ``vistool activations`` draws them.
    """

    layers: dict[str, torch.Tensor]
    logits: torch.Tensor | None
    layouts: dict[str, str | None] = field(default_factory=dict)

    def _repr_png_(self) -> bytes:
        first = next(iter(self.layers.values()))[0].detach().cpu()
        first = first if first.dim() == 3 else first.flatten()  # no grid: 1 x 1 cells
        return png_bytes(channel_grid(first[:64]))


def activations(model: LoadedModel | nn.Module, images: torch.Tensor,
                layers: str | Sequence[str], layout: str = "auto") -> ActivationResult:
    """Run ``images`` (N, C, H, W) through the model once and capture the named layers' outputs.

    ``layout`` says how the layers hold their grid (see :func:`vistool.core.layout.grid_view`):
    ``"auto"`` rearranges detected channels-last and token grids to (N, C, H, W) and leaves
    outputs without a grid as they are; ``"nchw"``, ``"nhwc"`` or ``"tokens"`` require it
    (a LayerError otherwise). The model runs in eval mode for this call and gets its own
    flags back afterwards. A module that runs more than once keeps its last output.
    """
    net = model.model if isinstance(model, LoadedModel) else model
    names = [layers] if isinstance(layers, str) else list(layers)
    with preserved_state(net, eval_mode=True), torch.no_grad(), record(net, names) as rec:
        logits = net(images)
    missing = [n for n in names if n not in rec]
    if missing:
        raise LayerError(f"layer(s) {', '.join(missing)} did not run in the forward pass; "
                         "pick layers listed with a shape by 'vistool layers'")
    out = logits if isinstance(logits, torch.Tensor) else None
    grids, layouts = {}, {}
    for name in names:
        value = rec[name]
        shape = tuple(getattr(value, "shape", ()))
        if layout == "auto" and detect(shape, images.shape[2:]) is None:
            grids[name], layouts[name] = value, None
            continue
        view = grid_view(name, value, images.shape[2:], layout)
        grids[name], layouts[name] = view.to_grid(value).contiguous(), view.layout
    return ActivationResult(layers=grids, logits=out, layouts=layouts)


def channel_stats(act: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean, max and fraction of zeros of one activation (C, H, W) or (C,)."""
    flat = act.reshape(act.shape[0], -1).float()
    return {
        "mean": flat.mean(1),
        "max": flat.amax(1),
        "zero_fraction": (flat == 0).float().mean(1),
    }
