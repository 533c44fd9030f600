"""Activations of named layers for a batch of images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import LayerError
from ..core.hooks import record
from ..core.state import preserved_state
from ..core.zoo import LoadedModel

__all__ = ["ActivationResult", "activations", "channel_stats"]


@dataclass
class ActivationResult:
    """Captured activations: ``layers[name]`` is (N, C, H, W) (or (N, F) for linear layers).

    ``logits`` is the model output for the batch (N, classes), kept for labelling.
    """

    layers: dict[str, torch.Tensor]
    logits: torch.Tensor | None


def activations(model: LoadedModel | nn.Module, images: torch.Tensor,
                layers: str | Sequence[str]) -> ActivationResult:
    """Run ``images`` (N, C, H, W) through the model once and capture the named layers' outputs.

    The model runs in eval mode for this call and gets its own flags back afterwards.
    A module that runs more than once keeps its last output.
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
    return ActivationResult(layers={n: rec[n] for n in names}, logits=out)


def channel_stats(act: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-channel mean, max and fraction of zeros of one activation (C, H, W) or (C,)."""
    flat = act.reshape(act.shape[0], -1).float()
    return {
        "mean": flat.mean(1),
        "max": flat.amax(1),
        "zero_fraction": (flat == 0).float().mean(1),
    }
