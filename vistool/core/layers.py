"""The layer table of a model, layer-name resolution and the default target layer.

Layers are addressed by the dotted names of ``model.named_modules()``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .devices import model_device
from .errors import LayerError, suggestion
from .layout import detect
from .state import preserved_state

__all__ = [
    "LayerInfo",
    "default_layer",
    "layer_names",
    "layer_table",
    "resolve_layers",
]


@dataclass(frozen=True)
class LayerInfo:
    """One row of a layer table: dotted name, module type, output shape (batch included), params.

    ``params`` counts the parameters of the module and its children. ``calls`` is how
    often the module ran in the dry forward pass (a shared module runs more than once);
    ``output_shape`` is that of its last call, or of the first tensor of a tuple output.
    """

    name: str
    type: str
    output_shape: list[int] | None
    params: int
    calls: int
    finished: int = -1  # position of the module's last completion in the dry run

    def to_dict(self) -> dict:
        """JSON-ready dict: name, type, output_shape, params, calls."""
        row = asdict(self)
        del row["finished"]
        return row


def layer_names(model: nn.Module) -> list[str]:
    """Dotted names of every submodule (the root, named ``""``, excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The modules named ``names``; an unknown name raises :class:`LayerError` with suggestions."""
    modules = dict(model.named_modules())
    found = []
    for name in names:
        module = modules.get(name) if name else None
        if module is None:
            raise LayerError(
                f"no layer named {name!r} in {type(model).__name__}"
                + suggestion(name, layer_names(model), "layers with 'vistool layers'")
            )
        found.append(module)
    return found


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (tuple, list)):
        for v in value:
            t = _first_tensor(v)
            if t is not None:
                return t
    if isinstance(value, dict):
        for v in value.values():
            t = _first_tensor(v)
            if t is not None:
                return t
    return None


def layer_table(model: nn.Module, input_size: Sequence[int]) -> list[LayerInfo]:
    """Run one dry forward pass of a zero batch of shape ``(1, *input_size)`` and tabulate layers.

    The model runs in eval mode under ``torch.no_grad`` and gets its own flags back; no
    statistics are updated and no hooks remain. Modules that did not run have
    ``output_shape=None``. Rows are in ``named_modules`` order.
    """
    shapes: dict[str, list[int] | None] = {}
    calls: dict[str, int] = {}
    finished: dict[str, int] = {}
    clock = itertools.count()
    handles = []
    named = [(n, m) for n, m in model.named_modules() if n]

    def make_hook(name):
        def hook(_module, _inputs, output):
            tensor = _first_tensor(output)
            shapes[name] = list(tensor.shape) if tensor is not None else None
            calls[name] = calls.get(name, 0) + 1
            finished[name] = next(clock)

        return hook

    x = torch.zeros((1, *input_size), device=model_device(model))
    with preserved_state(model, eval_mode=True), torch.no_grad():
        try:
            for name, module in named:
                handles.append(module.register_forward_hook(make_hook(name)))
            model(x)
        finally:
            for handle in handles:
                handle.remove()
    return [
        LayerInfo(
            name=name,
            type=type(module).__name__,
            output_shape=shapes.get(name),
            params=sum(p.numel() for p in module.parameters()),
            calls=calls.get(name, 0),
            finished=finished.get(name, -1),
        )
        for name, module in named
    ]


def _family_default(model: nn.Module) -> str | None:
    """The literature's layer where the generic rule picks another: for a torchvision ViT
    the last encoder block's first LayerNorm (after it only the class token reaches the
    head, so later layers have no gradient on the patch tokens; timm's: ``norm1``, as in
    pytorch-grad-cam's tutorial); for Swin the last stage's
    output, ``features`` (the rule would take the LayerNorm after it); for torchvision's
    segmentation models the backbone's last stage (``backbone.layer4`` for the ResNets, as
    in pytorch-grad-cam's tutorial), not the classifier that outputs the class scores."""
    kind = type(model).__name__
    backbone = getattr(model, "backbone", None)
    if type(backbone).__name__ == "IntermediateLayerGetter":  # torchvision segmentation
        return f"backbone.{list(backbone.named_children())[-1][0]}"  # its last stage
    if kind == "VisionTransformer" and hasattr(model, "encoder"):
        return f"encoder.layers.encoder_layer_{len(model.encoder.layers) - 1}.ln_1"
    if kind == "VisionTransformer" and hasattr(model, "blocks"):  # timm's (DeiT, ...)
        return f"blocks.{len(model.blocks) - 1}.norm1"
    if kind == "SwinTransformer" and hasattr(model, "features"):
        return "features"
    return None


def default_layer(model: nn.Module, input_size: Sequence[int] | None = None,
                  table: list[LayerInfo] | None = None) -> str:
    """The usual Grad-CAM layer: the last module to finish whose output still has spatial extent.

    Among modules that hold parameters (directly or in children) and whose output is a
    spatial grid larger than 1x1 — (N, C, H, W), channels-last (N, H, W, C) or tokens
    (N, [class tokens +] H·W, D), see :func:`vistool.core.layout.grid_view` — the one whose
    forward pass finished last; for a ResNet that is ``layer4``, for VGG ``features``, for
    GoogLeNet ``inception5b``. Swin gets ``features`` (its last stage, channels-last), a
    torchvision ViT its last encoder block's ``ln_1``. Pass ``table`` to reuse a
    computed :func:`layer_table` (``input_size`` then only tells the grid's size).
    """
    family = _family_default(model)
    if family is not None:
        return family
    if table is None:
        if input_size is None:
            raise ValueError("default_layer needs input_size or a layer table")
        table = layer_table(model, input_size)

    def spatial(shape) -> bool:
        if input_size is None:
            return len(shape) == 4 and max(shape[2:]) > 1
        view = detect(shape, input_size[-2:])
        return view is not None and max(view.grid) > 1

    candidates = [row for row in table
                  if row.params > 0 and row.output_shape is not None and spatial(row.output_shape)]
    if not candidates:
        raise LayerError(
            f"{type(model).__name__} has no layer with a spatial output; name one with `layer`"
        )
    return max(candidates, key=lambda row: row.finished).name
