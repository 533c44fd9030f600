"""Putting a caller's model back as it came: train/eval flags, ``requires_grad``, ``.grad``."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["preserved_state"]


@contextlib.contextmanager
def preserved_state(model: nn.Module, eval_mode: bool = False,
                    frozen: bool = False) -> Iterator[nn.Module]:
    """Restore the train/eval flags, ``requires_grad`` and ``.grad`` of every module on exit.

    With ``eval_mode=True`` the model runs in eval mode inside the block (so batch norm
    statistics and dropout are left alone) and gets its own flags back afterwards. With
    ``frozen=True`` no parameter requires grad inside the block: gradients with respect to
    activations or inputs then build no graph for the weights (less memory and time).
    """
    training = [(m, m.training) for m in model.modules()]
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    try:
        if eval_mode and any(flag for _, flag in training):
            model.eval()
        if frozen:
            for param, _, _ in params:
                param.requires_grad_(False)
        yield model
    finally:  # (only what changed: setting a module's attribute costs a Python call each)
        for module, flag in training:
            if module.training != flag:
                module.training = flag
        for param, requires_grad, grad in params:
            if param.requires_grad != requires_grad:
                param.requires_grad_(requires_grad)
            if param.grad is not grad:
                param.grad = grad
