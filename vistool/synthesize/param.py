"""Image parameterisations: a batch of images (N, C, H, W) in [0, 1] made from free tensors.

:class:`PixelImage` optimises pixels directly; :class:`FourierImage` (the default of
feature visualisation) optimises a Fourier spectrum scaled by 1/f, so that low
frequencies dominate, with decorrelated colour. Both squash the result into [0, 1] with
a sigmoid. Every image of a batch is drawn from its own generator, so an image does not
depend on the others in its batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..core.devices import DeviceConstant

__all__ = ["FourierImage", "ImageParam", "PixelImage", "make_param"]

# The square root of the colour correlation of ImageNet images (Olah et al., lucid), with
# columns scaled so that the largest has norm 1.
_COLOR_SQRT = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
COLOR_CORRELATION = _COLOR_SQRT / _COLOR_SQRT.norm(dim=0).max()
_CORRELATION = DeviceConstant(COLOR_CORRELATION)
_DECORRELATION = DeviceConstant(torch.linalg.inv(COLOR_CORRELATION.double()).float())


class ImageParam(nn.Module):
    """Base class: ``forward()`` returns the images (N, C, H, W) in [0, 1].

    ``decorrelate`` mixes the channels with :data:`COLOR_CORRELATION` (3 channels only)
    before the sigmoid.
    """

    def __init__(self, channels: int, decorrelate: bool):
        super().__init__()
        self.decorrelate = decorrelate and channels == 3

    def _to_rgb(self, values: torch.Tensor) -> torch.Tensor:
        if self.decorrelate:
            matrix = _CORRELATION.like(values)
            values = torch.einsum("nchw,dc->ndhw", values, matrix)
        return torch.sigmoid(values)

    def _from_rgb(self, images: torch.Tensor) -> torch.Tensor:
        values = torch.logit(images.clamp(1e-4, 1 - 1e-4))
        if self.decorrelate:
            inverse = _DECORRELATION.like(values)
            values = torch.einsum("nchw,dc->ndhw", values, inverse)
        return values


def _normal(shape: Sequence[int], generators: Sequence[torch.Generator]) -> torch.Tensor:
    return torch.stack([torch.randn(tuple(shape), generator=g) for g in generators])


class PixelImage(ImageParam):
    """Pixels (before colour decorrelation and sigmoid) as the free tensor."""

    def __init__(self, size: tuple[int, int, int], generators: Sequence[torch.Generator],
                 sd: float = 0.01, decorrelate: bool = True):
        super().__init__(size[0], decorrelate)
        self.pixels = nn.Parameter(_normal(size, generators) * sd)

    def forward(self) -> torch.Tensor:
        return self._to_rgb(self.pixels)

    def set_images(self, images: torch.Tensor) -> None:
        """Make ``forward()`` return ``images`` (N, C, H, W) in (0, 1)."""
        with torch.no_grad():
            self.pixels.copy_(self._from_rgb(images.to(self.pixels)))


class FourierImage(ImageParam):
    """A spectrum scaled by 1/f^decay as the free tensor (Olah et al. 2017, lucid/lucent).

    ``forward`` is ``sigmoid(decorrelate(irfft2(scale * spectrum) / 4))`` with the
    orthonormal inverse FFT, as lucent does.
    """

    def __init__(self, size: tuple[int, int, int], generators: Sequence[torch.Generator],
                 sd: float = 0.01, decay_power: float = 1.0, decorrelate: bool = True):
        super().__init__(size[0], decorrelate)
        channels, height, width = size
        self.height, self.width = height, width
        fy = torch.fft.fftfreq(height)[:, None]
        fx = torch.fft.rfftfreq(width)[None, :]
        freqs = (fx * fx + fy * fy).sqrt()
        scale = 1.0 / freqs.clamp(min=1.0 / max(height, width)) ** decay_power
        self.register_buffer("scale", scale[None, None])
        spectrum = _normal((channels, height, width // 2 + 1, 2), generators) * sd
        self.spectrum = nn.Parameter(spectrum)

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        values = torch.fft.irfft2(spectrum, s=(self.height, self.width), norm="ortho") / 4.0
        return self._to_rgb(values)

    def set_images(self, images: torch.Tensor) -> None:
        """Make ``forward()`` return ``images`` (N, C, H, W) in (0, 1)."""
        values = self._from_rgb(images.to(self.scale)) * 4.0
        spectrum = torch.fft.rfft2(values, norm="ortho") / self.scale
        with torch.no_grad():
            self.spectrum.copy_(torch.view_as_real(spectrum))


def make_param(kind: str, size: tuple[int, int, int], generators: Sequence[torch.Generator],
               decorrelate: bool = True) -> ImageParam:
    """``"fft"`` (:class:`FourierImage`) or ``"pixel"`` (:class:`PixelImage`), one image per
    generator, each (C, H, W) = ``size``."""
    if kind == "fft":
        return FourierImage(size, generators, decorrelate=decorrelate)
    if kind == "pixel":
        return PixelImage(size, generators, decorrelate=decorrelate)
    from ..core.errors import VistoolError

    raise VistoolError(f"unknown image parameterisation {kind!r}; use fft or pixel")
