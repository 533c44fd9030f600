"""Dataset examples (the Distill "Feature Visualization" practice): for every channel of a
layer, the images of a dataset that excite it most, where (the strongest position) and
the patch of the image that position sees, beside the synthetic image.

One pass over the images, batch by batch: each image's strongest activation per channel
joins a per-channel top-k (a ``torch.topk`` over the k kept and the batch's), so memory
does not grow with the number of images, and the result is exactly the k highest of a
brute-force pass (ties aside).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..core.errors import VistoolError
from ..core.hooks import forward_until
from ..core.imageio import resize
from ..core.layout import grid_view
from ..core.progress import Progress, progress_bar
from ..core.state import preserved_state
from ..core.zoo import LoadedModel

__all__ = ["TopExamples", "receptive_field", "top_examples"]


@dataclass
class TopExamples:
    """The result of :func:`top_examples`, for a layer of C channels and ``top`` = k.

    Attributes:
        values: (C, k) each channel's strongest activation in each of its top images,
            highest first (-inf where the stream had fewer than k images).
        indices: (C, k) those images' places in the stream (-1 where none).
        positions: (C, k, 2) the (y, x) of that activation on the layer's grid.
        means: (C,) each channel's mean activation over every image and position.
        grid: the layer's (h, w); images: how many images were seen.
        layer: the layer.
    """

    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    means: torch.Tensor
    grid: tuple[int, int]
    images: int
    layer: str

    def patch_box(self, channel: int, rank: int, size: tuple[int, int],
                  field: int) -> tuple[int, int, int, int]:
        """The (x0, y0, x1, y1) in an input of ``size`` (H, W) that the ``rank``-th example
        of ``channel`` is centred on: a ``field``-pixel square around the strongest
        position's centre, moved inside the image."""
        (h, w), (height, width) = self.grid, size
        y, x = (int(v) for v in self.positions[channel, rank])
        cy, cx = (y + 0.5) * height / h, (x + 0.5) * width / w
        side_y, side_x = min(field, height), min(field, width)
        y0 = int(min(max(round(cy - side_y / 2), 0), height - side_y))
        x0 = int(min(max(round(cx - side_x / 2), 0), width - side_x))
        return x0, y0, x0 + side_x, y0 + side_y

    def patches(self, channel: int, picture: Callable[[int], torch.Tensor], field: int,
                size: tuple[int, int]) -> list[torch.Tensor]:
        """The patches of ``channel``'s top images that its strongest positions see
        (:meth:`patch_box`), each resized to ``size``; ``picture(index)`` is the image at
        that place of the stream as a picture (C, H, W) in [0, 1]."""
        patches = []
        for rank, index in enumerate(self.indices[channel].tolist()):
            if index < 0:  # (the stream had fewer images)
                break
            image = picture(index)
            x0, y0, x1, y1 = self.patch_box(channel, rank, tuple(image.shape[1:]), field)
            patches.append(resize(image[None, :, y0:y1, x0:x1], size, clamp=True)[0])
        return patches


def _grid(loaded: LoadedModel, batch: torch.Tensor, layer: str) -> torch.Tensor:
    act = forward_until(loaded.model, batch, [layer], gradients=False)[layer]
    if not isinstance(act, torch.Tensor) or act.dim() < 3:
        raise VistoolError(f"layer {layer!r} has no spatial output; dataset examples need a "
                           "layer with one ('vistool layers' lists them)")
    return grid_view(layer, act, batch.shape[2:]).to_grid(act).float()


def top_examples(loaded: LoadedModel, batches: Iterable[torch.Tensor], layer: str,
                 top: int = 9, total: int | None = None, progress: Progress = False,
                 start: TopExamples | None = None,
                 after_batch: Callable[[TopExamples], None] | None = None) -> TopExamples:
    """The ``top`` images of ``batches`` (preprocessed (B, C, H, W), in stream order) that
    excite each channel of ``layer`` most, by each image's strongest position.

    ``total``: the number of images, for the progress bar. ``start``: a result so far
    (a resumed pass: ``batches`` then go on from image ``start.images``);
    ``after_batch(result so far)`` after every batch (to save it). The network runs only up
    to ``layer``, without gradients; the model comes back as it was.

    Raises:
        VistoolError: ``top`` below 1, a layer without a spatial output, no images.
    """
    if top < 1:
        raise VistoolError(f"`top={top}` must be at least 1")
    values = indices = positions = sums = None
    seen, grid = 0, (0, 0)
    if start is not None:
        values, indices = start.values.to(loaded.device), start.indices.to(loaded.device)
        positions = (start.positions[..., 0] * start.grid[1] + start.positions[..., 1]).to(
            loaded.device)
        sums, seen, grid = start.means.cpu().double() * start.images, start.images, start.grid
    bar = progress_bar(total or 0, "examples", progress)
    with preserved_state(loaded.model, eval_mode=True), torch.no_grad():
        for batch in batches:
            act = _grid(loaded, batch.to(loaded.device), layer)  # (B, C, h, w)
            n, c, h, w = act.shape
            grid = (h, w)
            peak, where = act.flatten(2).max(2)  # (B, C)
            if values is None:
                values = act.new_full((c, top), float("-inf"))
                indices = torch.full((c, top), -1, dtype=torch.long, device=act.device)
                positions = torch.zeros((c, top), dtype=torch.long, device=act.device)
                sums = torch.zeros(c, dtype=torch.float64)  # (on the CPU: MPS has none)
            numbers = torch.arange(seen, seen + n, device=act.device).expand(c, n)
            values, chosen = torch.cat([values, peak.T], 1).topk(top, dim=1)
            indices = torch.cat([indices, numbers], 1).gather(1, chosen)
            positions = torch.cat([positions, where.T], 1).gather(1, chosen)
            sums += act.mean((2, 3)).sum(0).cpu().double()
            seen += n
            bar.update(n)
            if after_batch is not None:
                after_batch(_result(values, indices, positions, sums, grid, seen, layer))
    bar.close()
    if values is None:
        raise VistoolError("no images to find examples in; give a folder, glob, list or "
                           "dataset with readable images")
    return _result(values, indices, positions, sums, grid, seen, layer)


def _result(values, indices, positions, sums, grid, seen, layer) -> TopExamples:
    yx = torch.stack([positions // grid[1], positions % grid[1]], -1)
    return TopExamples(values.cpu(), indices.cpu(), yx.cpu(), (sums / seen).float(), grid,
                       seen, layer)


def receptive_field(loaded: LoadedModel, layer: str, size: int) -> int:
    """The side, in input pixels, of the square that the centre position of ``layer``
    sees (where its gradient with respect to a random ``size``-pixel input is not zero),
    at most ``size``."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, loaded.input_size[0], size, size, generator=generator).to(
        loaded.device).requires_grad_(True)
    with preserved_state(loaded.model, eval_mode=True, frozen=True), torch.enable_grad():
        act = forward_until(loaded.model, x, [layer])[layer]
        grid = grid_view(layer, act, x.shape[2:]).to_grid(act)
        h, w = grid.shape[2:]
        (grad,) = torch.autograd.grad(grid[0, :, h // 2, w // 2].sum(), x)
    seen = grad[0].abs().sum(0) > 0
    rows, cols = seen.any(1).nonzero(), seen.any(0).nonzero()
    if not len(rows):
        return size
    return int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))
