"""Localisation and complexity metrics of explanation maps: batched, on the maps' device,
one value per image.

Every function takes ``maps`` (N, H, W) (any real values; the localisation metrics use them
as they are, so pass non-negative maps) and, for localisation, ``masks`` (N, H, W) bool
(the object's pixels; a box is a mask too, see :func:`box_masks`). The traps are handled
explicitly:

* a **constant map** (blank included) points nowhere: it is never a pointing-game hit;
* an **empty mask** gives NaN (with an :class:`EmptyMaskWarning`): there is nothing to hit;
* **ties** at the peak: a hit needs every pixel that reaches the maximum inside the mask.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F

__all__ = [
    "EmptyMaskWarning",
    "box_masks",
    "default_tolerance",
    "iou",
    "pointing_game",
    "relevance_mass",
    "sparseness",
]


class EmptyMaskWarning(UserWarning):
    """A localisation metric got an empty mask: its value for that image is NaN."""


def _check(maps: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if maps.dim() != 3 or masks.shape != maps.shape:
        raise ValueError(f"maps and masks must both be (N, H, W); got {tuple(maps.shape)} "
                         f"and {tuple(masks.shape)}")
    masks = masks.to(device=maps.device, dtype=torch.bool)
    return maps.float(), masks


def _nan_where_empty(values: torch.Tensor, masks: torch.Tensor, metric: str) -> torch.Tensor:
    empty = ~masks.flatten(1).any(1)
    if bool(empty.any()):
        warnings.warn(f"{metric}: {int(empty.sum())} empty mask(s); their values are NaN",
                      EmptyMaskWarning, stacklevel=3)
        values = values.masked_fill(empty, math.nan)
    return values


def box_masks(boxes: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Boxes (N, 4) as ``(x0, y0, x1, y1)`` (x1, y1 exclusive) -> bool masks (N, H, W)."""
    boxes = torch.as_tensor(boxes)
    ys = torch.arange(size[0], device=boxes.device)[None, :, None]
    xs = torch.arange(size[1], device=boxes.device)[None, None, :]
    x0, y0, x1, y1 = (boxes[:, i, None, None] for i in range(4))
    return (xs >= x0) & (xs < x1) & (ys >= y0) & (ys < y1)


def default_tolerance(size: tuple[int, int] | int) -> int:
    """The pointing game's usual tolerance, Zhang et al.'s 15 pixels at 224, scaled to an
    image of ``size`` (its shorter side)."""
    side = size if isinstance(size, int) else min(size)
    return round(15 * side / 224)


def _dilate(masks: torch.Tensor, tolerance: int) -> torch.Tensor:
    """Grow the masks by every pixel within ``tolerance`` pixels (Euclidean)."""
    if tolerance <= 0:
        return masks
    r = torch.arange(-tolerance, tolerance + 1, device=masks.device, dtype=torch.float32)
    disk = ((r[:, None] ** 2 + r[None, :] ** 2) <= tolerance ** 2).float()[None, None]
    grown = F.conv2d(masks[:, None].float(), disk, padding=tolerance)
    return grown[:, 0] > 0.5


def pointing_game(maps: torch.Tensor, masks: torch.Tensor, tolerance: int = 0) -> torch.Tensor:
    """Zhang et al. (2016): 1.0 when the map's peak lies in the mask, else 0.0 (higher is
    better). ``tolerance``: pixels within this distance of the mask count as inside (the
    paper uses 15 at 224²). A constant map is a miss; with tied maxima every one of them must
    be inside; an empty mask gives NaN."""
    maps, masks = _check(maps, masks)
    flat = maps.flatten(1)
    peak = flat == flat.amax(1, keepdim=True)
    constant = flat.amin(1) == flat.amax(1)
    inside = _dilate(masks, tolerance).flatten(1)
    hit = (peak <= inside).all(1) & ~constant
    return _nan_where_empty(hit.float(), masks, "pointing_game")


def relevance_mass(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Arras et al. (2022) relevance mass accuracy, and with box masks the energy pointing
    game of Score-CAM: the share of the map's sum that lies in the mask (higher is better;
    a constant map scores the mask's area fraction, the chance level). A map summing to 0
    scores 0; an empty mask NaN."""
    maps, masks = _check(maps, masks)
    total = maps.flatten(1).sum(1)
    within = (maps * masks).flatten(1).sum(1)
    mass = torch.where(total != 0, within / total.where(total != 0, 1.0), 0.0)
    return _nan_where_empty(mass, masks, "relevance_mass")


def iou(maps: torch.Tensor, masks: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Intersection over union of the region where the map reaches ``threshold`` × its
    maximum with the mask (higher is better). A constant map selects no region (IoU 0);
    an empty mask gives NaN."""
    maps, masks = _check(maps, masks)
    flat = maps.flatten(1)
    high, low = flat.amax(1, keepdim=True), flat.amin(1, keepdim=True)
    region = (flat >= threshold * high) & (high > low)
    truth = masks.flatten(1)
    union = (region | truth).sum(1)
    score = (region & truth).sum(1) / union.clamp(min=1)
    return _nan_where_empty(score.float(), masks, "iou")


def sparseness(maps: torch.Tensor) -> torch.Tensor:
    """Chalasani et al. (2020): the Gini index of the map's absolute values, 0 for a uniform
    map, towards 1 when all the mass sits in one pixel (higher is better). A blank map
    scores 0."""
    if maps.dim() < 2:
        raise ValueError(f"maps must be (N, ...); got {tuple(maps.shape)}")
    values = maps.float().flatten(1).abs().sort(1).values
    n = values.shape[1]
    rank = torch.arange(1, n + 1, device=values.device, dtype=values.dtype)
    total = values.sum(1)
    gini = ((2 * rank - n - 1) * values).sum(1) / (n * total.where(total != 0, 1.0))
    return torch.where(total != 0, gini, 0.0)
