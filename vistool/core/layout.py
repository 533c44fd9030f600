"""Where a layer's output keeps its spatial grid: (N, C, H, W), channels-last (N, H, W, C)
as in Swin, or tokens (N, [extra +] H·W, D) as in ViT (one class token) or DeiT (two).

:func:`grid_view` finds the layout from the output's shape and the input's size (or takes
the one a user names) and returns a :class:`GridView` that maps the output to (N, C, H, W)
and back. CAMs and activations read every layer through it, so no method ever treats a
height as a channel axis.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .errors import LayerError, VistoolError

__all__ = ["LAYOUTS", "GridView", "ReshapeView", "detect", "grid_view"]

#: The layouts a user can name (``layout``); ``auto`` detects them.
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")
_MAX_EXTRA_TOKENS = 2  # class token (ViT), class + distillation tokens (DeiT)


@dataclass(frozen=True)
class GridView:
    """How one layer's output maps to (N, C, H, W).

    Attributes:
        layout: ``"nchw"``, ``"nhwc"`` or ``"tokens"``.
        grid: (H, W) of the spatial grid.
        extra: leading tokens that are not grid positions (class tokens), dropped.
    """

    layout: str
    grid: tuple[int, int]
    extra: int = 0

    def to_grid(self, value: torch.Tensor, lead: int = 1) -> torch.Tensor:
        """``value`` (``lead`` leading dims, then the layer's own layout) as (..., C, H, W):
        a view for ``nchw`` and ``nhwc``, a copy-free reshape of the grid tokens otherwise.
        Gradients of the output map the same way."""
        if self.layout == "nchw":
            return value
        dims = list(range(lead))
        if self.layout == "nhwc":
            return value.permute(*dims, lead + 2, lead, lead + 1)
        tokens = value[(slice(None),) * lead + (slice(self.extra, None),)]
        grid = tokens.reshape(*value.shape[:lead], *self.grid, value.shape[-1])
        return grid.permute(*dims, lead + 2, lead, lead + 1)

    def from_grid(self, grid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`to_grid` for one output: ``grid`` (N, C, H, W) in the
        layer's layout, the extra tokens taken from ``like`` (the layer's output)."""
        if self.layout == "nchw":
            return grid
        last = grid.permute(0, 2, 3, 1)
        if self.layout == "nhwc":
            return last.contiguous()
        flat = last.reshape(grid.shape[0], -1, grid.shape[1])
        return torch.cat([like[:grid.shape[0], :self.extra].to(flat), flat], 1)


@dataclass(frozen=True)
class ReshapeView:
    """A user's ``reshape(output) -> (N, C, H, W)`` (anything the built-in layouts miss),
    applied to the output and, the same way, to its gradient. It cannot be inverted, so
    a method that writes the layer's output back (Ablation-CAM) refuses it."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    layout: str = "reshape"

    def to_grid(self, value: torch.Tensor, lead: int = 1) -> torch.Tensor:
        grid = self.fn(value.reshape(-1, *value.shape[lead:]))
        return grid.reshape(*value.shape[:lead], *grid.shape[1:])

    def from_grid(self, grid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        raise VistoolError("ablationcam writes the layer's output back, which a reshape= "
                           "callable cannot invert; give layout= instead or use another method")


def _fits(grid: Sequence[int], size: Sequence[int]) -> bool:
    """Whether ``grid`` (h, w) can be ``size`` (H, W) seen through one stride: within the
    image, and w less than one position from W·h/H."""
    h, w = grid
    return 1 <= h <= size[0] and 1 <= w <= size[1] and abs(size[1] * h / size[0] - w) < 1


def _token_grid(count: int, size: Sequence[int]) -> tuple[int, int] | None:
    """(h, w) with h·w = ``count`` that fits ``size``, closest to its aspect ratio."""
    fits = [(h, count // h) for h in range(1, count + 1)
            if count % h == 0 and _fits((h, count // h), size)]
    return min(fits, key=lambda g: abs(g[0] * size[1] - g[1] * size[0]), default=None)


def detect(shape: Sequence[int], size: Sequence[int]) -> GridView | None:
    """The :class:`GridView` of an output ``shape`` for an input of ``size`` (H, W), or None
    when no layout fits (the rules of :func:`grid_view`'s ``auto``)."""
    if len(shape) == 4:
        if _fits(shape[2:], size):
            return GridView("nchw", (shape[2], shape[3]))
        if _fits(shape[1:3], size):
            return GridView("nhwc", (shape[1], shape[2]))
    if len(shape) == 3:
        for extra in range(_MAX_EXTRA_TOKENS + 1):
            grid = _token_grid(shape[1] - extra, size) if shape[1] > extra else None
            if grid is not None:
                return GridView("tokens", grid, extra)
    return None


def grid_view(name: str, output: torch.Tensor, size: Sequence[int], layout: str = "auto",
              reshape: Callable[[torch.Tensor], torch.Tensor] | None = None
              ) -> GridView | ReshapeView:
    """How layer ``name``'s ``output`` maps to (N, C, H, W) for an input of ``size`` (H, W).

    ``auto`` detects it: a 4-d output is (N, C, H, W) when its last two dims fit the input
    as a strided grid, else channels-last when its middle two do; a 3-d output is tokens
    when its count, less up to two leading class tokens, factors into such a grid. Named
    layouts are checked against the shape.

    ``reshape`` (a callable, output -> (N, C, H, W)) replaces the detection.

    Raises:
        LayerError: the output has no grid the layout allows, or ``reshape`` does not give
            a 4-d tensor; the message names the shape and the ``layout`` choices.
    """
    if reshape is not None:
        shape = tuple(getattr(reshape(output), "shape", ()))
        if len(shape) != 4:
            raise LayerError(f"reshape= turned layer {name!r}'s output into shape {shape}; it "
                             "must return (N, C, H, W)")
        return ReshapeView(reshape)
    if layout not in LAYOUTS:
        raise LayerError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else ()
    view = detect(shape, size) if shape else None
    if layout == "nchw" and len(shape) == 4:
        view = GridView("nchw", (shape[2], shape[3]))
    elif layout == "nhwc" and len(shape) == 4:
        view = GridView("nhwc", (shape[1], shape[2]))
    elif layout == "tokens" and len(shape) == 3 and (view is None or view.layout != "tokens"):
        view = None
    if view is None or layout not in ("auto", view.layout):
        what = f"{type(output).__name__} of shape {shape}" if shape else type(output).__name__
        raise LayerError(
            f"layer {name!r} outputs {what}, which is not a spatial grid for a "
            f"{size[0]}x{size[1]} input as {'any layout' if layout == 'auto' else layout}; "
            "pick a layer with a spatial output ('vistool layers'), or say how it is laid "
            "out with `layout=nchw|nhwc|tokens`")
    return view
