"""Transfer learning: a torchvision backbone with a new head (the cats-vs-dogs case).

Modes: ``finetune`` trains every layer, ``freeze`` trains the head only, ``concat``
concatenates the pooled features of several backbones before one linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_model
from .classic import IMAGENET_MEAN, IMAGENET_STD


def _backbone(name: str, pretrained: bool) -> tuple[nn.Module, int]:
    """A torchvision classifier with its head replaced by Identity, and its feature width."""
    import torchvision

    weights = "DEFAULT" if pretrained else None
    model = torchvision.models.get_model(name, weights=weights)
    for attr in ("fc", "classifier", "head", "heads"):
        head = getattr(model, attr, None)
        if head is None:
            continue
        linear = head if isinstance(head, nn.Linear) else [
            m for m in head.modules() if isinstance(m, nn.Linear)][-1]
        width = linear.in_features
        if isinstance(head, nn.Linear):
            setattr(model, attr, nn.Identity())
        else:  # keep e.g. MobileNet's hidden layers up to the last Linear
            layers = list(head.children())
            setattr(model, attr, nn.Sequential(*layers[:-1]))
        return model, width
    raise ValueError(f"cannot find the classification head of {name}")


@register_model("transfer", input_size=(3, 224, 224), mean=IMAGENET_MEAN, std=IMAGENET_STD)
class TransferNet(nn.Module):
    """Backbone(s) + linear head. ``pretrained`` loads torchvision's default weights (torch hub
    cache); checkpoints store the trained weights, so reloading never downloads."""

    def __init__(self, num_classes: int = 2, backbones: tuple[str, ...] = ("resnet18",),
                 mode: str = "finetune", pretrained: bool = False):
        super().__init__()
        if mode not in ("finetune", "freeze", "concat"):
            raise ValueError(f"mode must be finetune, freeze or concat, not {mode!r}")
        if mode != "concat" and len(backbones) != 1:
            raise ValueError(f"mode {mode!r} takes one backbone; use concat for several")
        built = [_backbone(name, pretrained) for name in backbones]
        self.mode = mode
        self.backbones = nn.ModuleList(model for model, _ in built)
        self.head = nn.Linear(sum(width for _, width in built), num_classes)
        if mode in ("freeze", "concat"):
            for param in self.backbones.parameters():
                param.requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.mode in ("freeze", "concat"):
            self.backbones.eval()  # frozen features: batch-norm statistics stay as loaded
        return self

    def forward(self, x):
        return self.head(torch.cat([b(x).flatten(1) for b in self.backbones], 1))
