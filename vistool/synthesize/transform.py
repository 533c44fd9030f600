"""Random transformations for transformation robustness, all in one ``grid_sample``.

Every step, each image of the batch is padded, jittered, scaled, rotated and jittered
again by amounts drawn from its own generator. The five transformations compose into one
affine map per image, applied to the whole batch with a single ``affine_grid`` /
``grid_sample`` (bilinear; outside the image is grey, 0.5). The output has the input's
size: padding by ``p`` pixels shows the image shrunk inside a grey border of ``p`` pixels.
Every strength 0 is the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Transforms"]


@dataclass(frozen=True)
class Transforms:
    """Strengths of the random transformations (lucent's ``standard_transforms`` by default).

    Attributes:
        pad: grey border in pixels (each side).
        jitter: first translation, uniform in ±``jitter`` pixels on each axis.
        scale: zoom factor uniform in [1 - scale, 1 + scale].
        rotate: rotation uniform in ±``rotate`` degrees.
        jitter2: second translation, uniform in ±``jitter2`` pixels.
    """

    pad: float = 12
    jitter: float = 8
    scale: float = 0.1
    rotate: float = 10
    jitter2: float = 4

    @classmethod
    def none(cls) -> Transforms:
        """The identity: every strength 0."""
        return cls(0, 0, 0, 0, 0)

    @property
    def identity(self) -> bool:
        """True when every strength is 0."""
        return not any((self.pad, self.jitter, self.scale, self.rotate, self.jitter2))

    def matrices(self, size: Sequence[int], generators: Sequence[torch.Generator]) -> torch.Tensor:
        """One (2, 3) sampling matrix per generator for ``affine_grid`` (output -> input
        coordinates, normalised, ``align_corners=False``), for images of ``size`` (H, W)."""
        height, width = size
        draws = torch.stack([torch.rand(6, generator=g, dtype=torch.float64)
                             for g in generators]) * 2 - 1  # uniform in [-1, 1)
        shrink = min(height / (height + 2 * self.pad), width / (width + 2 * self.pad))
        zoom = (1 + self.scale * draws[:, 2]) * shrink
        angle = draws[:, 3] * math.radians(self.rotate)
        # In pixels about the centre: output u = J2 R Z J1 x, so x = J1^-1 Z^-1 R^-1 J2^-1 u.
        cos, sin = torch.cos(angle), torch.sin(angle)
        inverse = torch.stack([torch.stack([cos, sin], 1), torch.stack([-sin, cos], 1)], 1)
        inverse = inverse / zoom[:, None, None]
        shift1 = draws[:, 0:2] * self.jitter
        shift2 = draws[:, 4:6] * self.jitter2
        offset = -shift1 - (inverse @ shift2[:, :, None])[:, :, 0]
        to_norm = torch.tensor([2 / width, 2 / height], dtype=torch.float64)
        linear = inverse * to_norm[None, :, None] / to_norm[None, None, :]
        return torch.cat([linear, (offset * to_norm)[:, :, None]], 2).float()

    def __call__(self, images: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
        """Transform ``images`` (N, C, H, W), image ``i`` with ``generators[i]``."""
        if self.identity:
            return images
        theta = self.matrices(images.shape[2:], generators).to(images.dtype)  # CPU generators
        cuda = images.device.type == "cuda"
        if cuda:  # from pinned memory the copy does not block (MPS: no pinned memory, and a
            theta = theta.pin_memory()  # non-blocking copy from pageable memory is unsafe)
        theta = theta.to(images.device, non_blocking=cuda)
        grid = F.affine_grid(theta, list(images.shape), align_corners=False)
        moved = F.grid_sample(images - 0.5, grid, mode="bilinear", padding_mode="zeros",
                              align_corners=False)
        return moved + 0.5
