"""Turning tensors into pictures: colour maps, overlays and channel grids.

Everything works on torch tensors on their own device; ``to_uint8_hwc`` is the one
exit to NumPy, used when a picture is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from .core.errors import VistoolError

__all__ = [
    "apply_colormap",
    "channel_grid",
    "enlarge",
    "image_grid",
    "line_chart",
    "normalize",
    "overlay",
    "png_bytes",
    "show",
    "to_uint8_hwc",
]


@lru_cache(maxsize=16)
def _lut(name: str) -> np.ndarray:
    import matplotlib

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        from .core.errors import suggestion

        raise VistoolError(
            f"unknown colormap {name!r}" + suggestion(name, list(matplotlib.colormaps), "colormaps")
        ) from None
    return cmap(np.linspace(0.0, 1.0, 256))[:, :3].astype(np.float32)


def apply_colormap(values: torch.Tensor, name: str = "viridis") -> torch.Tensor:
    """Map values in [0, 1] of shape (..., H, W) to RGB floats of shape (..., 3, H, W)."""
    lut = torch.from_numpy(_lut(name)).to(values.device)
    index = (values.clamp(0, 1) * 255).round().long()
    rgb = lut[index]  # (..., H, W, 3)
    return rgb.movedim(-1, -3)


def normalize(values: torch.Tensor, dims: Sequence[int] = (-2, -1)) -> torch.Tensor:
    """Min-max scale to [0, 1] over ``dims``; a constant slice becomes zeros (never NaN)."""
    lo = values.amin(dim=tuple(dims), keepdim=True)
    hi = values.amax(dim=tuple(dims), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (values - lo) / span.clamp_min(1e-12), torch.zeros_like(values))


def _chw(image) -> torch.Tensor:
    """A picture as a float tensor (3, H, W) in [0, 1]: a tensor (C, H, W) in [0, 1], or a
    NumPy array / PIL image (H, W[, C]), uint8 or float in [0, 1]."""
    if isinstance(image, torch.Tensor):
        picture = image.float()
    else:
        array = np.asarray(image)
        picture = torch.from_numpy(array.astype(np.float32) / (255 if array.dtype == np.uint8
                                                               else 1))
        picture = picture[None] if picture.dim() == 2 else picture.movedim(-1, 0)
    if picture.dim() != 3 or picture.shape[0] not in (1, 3, 4):
        raise VistoolError(f"expected an image (3, H, W) or (H, W, 3), got "
                           f"{tuple(picture.shape)}")
    return picture[:3].expand(3, -1, -1) if picture.shape[0] == 1 else picture[:3]


def overlay(image, heatmap, alpha: float = 0.5, colormap: str = "jet"):
    """Blend a colour-mapped heatmap (H, W) in [0, 1] onto an RGB image.

    ``image``: a tensor (3, H, W) in [0, 1] (the result is such a tensor), or, as
    pytorch-grad-cam's ``show_cam_on_image`` takes it, a NumPy array or PIL image (H, W, 3),
    float in [0, 1] or uint8 (the result is a uint8 array (H, W, 3)). ``heatmap``: a tensor
    or array (H, W) in [0, 1], such as ``explain(...).maps[i]``; it is resized bilinearly to
    the image if their sizes differ. ``alpha``: the heatmap's weight; ``colormap``: a
    matplotlib colormap name.
    """
    if not isinstance(image, torch.Tensor):
        heat = torch.as_tensor(np.asarray(heatmap, dtype=np.float32))
        return to_uint8_hwc(overlay(_chw(image), heat, alpha, colormap))
    heatmap = torch.as_tensor(heatmap).to(image.device)
    if heatmap.shape[-2:] != image.shape[-2:]:
        heatmap = F.interpolate(heatmap[None, None].float(), size=image.shape[-2:],
                                mode="bilinear", align_corners=False)[0, 0]
    colored = apply_colormap(heatmap, colormap)
    return ((1 - alpha) * image + alpha * colored).clamp(0, 1)


def channel_grid(act: torch.Tensor, channels: Sequence[int] | None = None,
                 normalization: str = "channel", colormap: str = "viridis",
                 cell: int = 64, pad: int = 2) -> torch.Tensor:
    """Render the channels of one activation (C, H, W) as a colour-mapped grid (3, H', W').

    Args:
        act: activations of one image at one layer. A (C,) vector is shown as 1x1 cells.
        channels: indices to show (default all).
        normalization: ``"channel"`` scales each channel to [0, 1] on its own;
            ``"layer"`` uses one min/max for all shown channels, so strengths compare.
        colormap: a matplotlib colormap name.
        cell: each channel is upscaled (nearest) to about this many pixels on its longer side.
        pad: pixels of white between cells.
    """
    if act.dim() == 1:
        act = act[:, None, None]
    if act.dim() != 3:
        raise VistoolError(f"expected activations of shape (C, H, W), got {tuple(act.shape)}")
    if channels is not None:
        act = act[list(channels)]
    act = act.float()
    if normalization == "channel":
        scaled = normalize(act)
    elif normalization == "layer":
        scaled = normalize(act, dims=(0, 1, 2))
    else:
        raise VistoolError(f"normalization must be 'channel' or 'layer', not {normalization!r}")
    height, width = scaled.shape[1:]
    factor = max(1, cell // max(height, width))
    scaled = scaled.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
    return image_grid(apply_colormap(scaled, colormap), pad)  # (C, 3, h, w) tiled


def image_grid(images: torch.Tensor, pad: int = 2, cols: int | None = None,
               cell: int = 0) -> torch.Tensor:
    """Tile images (K, C, H, W) in [0, 1] into one contact sheet (3, H', W') on white.

    Grey images are shown in grey; ``cols`` defaults to a near-square layout; each image is
    upscaled (nearest) to about ``cell`` pixels on its longer side when that is larger.
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise VistoolError(f"expected images of shape (K, C, H, W), got {tuple(images.shape)}")
    images = images.float().clamp(0, 1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    factor = max(1, cell // max(images.shape[-2:]))
    images = images.repeat_interleave(factor, 2).repeat_interleave(factor, 3)
    count, _, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(count))
    rows = math.ceil(count / cols)
    grid = torch.ones(3, rows * (h + pad) + pad, cols * (w + pad) + pad, device=images.device)
    for i in range(count):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i, :3]
    return grid


def enlarge(image: torch.Tensor, min_size: int = 224) -> torch.Tensor:
    """Upscale (nearest, integer factor) an image (3, H, W) whose shorter side is < min_size."""
    factor = max(1, math.ceil(min_size / min(image.shape[-2:])))
    if factor == 1:
        return image
    return image.repeat_interleave(factor, -2).repeat_interleave(factor, -1)


def to_uint8_hwc(image) -> np.ndarray:
    """A float tensor/array (3, H, W) in [0, 1], or a uint8 (H, W, 3) array -> uint8 (H, W, 3)."""
    if isinstance(image, torch.Tensor):
        image = image.detach().float().clamp(0, 1).mul(255).round().byte()
        return image.permute(1, 2, 0).cpu().numpy() if image.dim() == 3 else image.cpu().numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.transpose(1, 2, 0)
    return image


def line_chart(panels: Sequence[dict], width: float = 5.0, height: float = 3.6,
               dpi: int = 100) -> np.ndarray:
    """Line charts side by side as one RGB picture (H, W, 3) uint8 (matplotlib, no display).

    Each panel is ``{"title", "xlabel", "ylabel", "series": {label: (x, y)}}`` and may
    have ``"xticks": (positions, labels)`` and ``"ylim": (lo, hi)``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width * len(panels), height), dpi=dpi, layout="constrained")
    canvas = FigureCanvasAgg(figure)
    for i, panel in enumerate(panels):
        ax = figure.add_subplot(1, len(panels), i + 1)
        for label, (x, y) in panel["series"].items():
            ax.plot(np.asarray(x), np.asarray(y), marker="." if len(y) < 30 else None,
                    label=label)
        ax.set(title=panel.get("title", ""), xlabel=panel.get("xlabel", ""),
               ylabel=panel.get("ylabel", ""))
        if "xticks" in panel:
            ax.set_xticks(*panel["xticks"], rotation=60, ha="right", fontsize=7)
        if "ylim" in panel:
            ax.set_ylim(*panel["ylim"])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def png_bytes(image) -> bytes:
    """A picture (as :func:`to_uint8_hwc` takes it) encoded as PNG."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_uint8_hwc(image)).save(buffer, format="PNG")
    return buffer.getvalue()


def show(picture, title: str | None = None) -> None:
    """Show a result of vistool (what its ``_repr_png_`` draws: a CAM's overlays, a
    filter grid, a dream ...) or an image (a tensor (3, H, W) in [0, 1], an array or a PIL
    image): inline in a Jupyter notebook, else in a matplotlib window. ``title``: shown
    above it in the matplotlib window."""
    png = picture._repr_png_() if hasattr(picture, "_repr_png_") else png_bytes(
        _chw(picture))
    try:
        from IPython import get_ipython
        from IPython.display import Image as IPythonImage
        from IPython.display import display
    except ImportError:
        get_ipython = None
    if get_ipython is not None and get_ipython() is not None:
        display(IPythonImage(data=png))
        return
    import io

    import matplotlib.pyplot as plt
    from PIL import Image

    plt.figure()
    plt.imshow(np.asarray(Image.open(io.BytesIO(png))))
    plt.axis("off")
    if title:
        plt.title(title)
    plt.show()
