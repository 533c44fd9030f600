"""DeepDream: gradient ascent on a photograph to amplify what chosen layers detect.

The image is optimised in pixel space directly, as the classic DeepDream does (no
:class:`~vistool.synthesize.param.ImageParam`, no Adam): every step adds ``lr`` times the
gradient divided by its mean absolute value, and clamps the pixels to [0, 1]. The tricks
that make it work:

* octaves: the image is dreamed at ``octaves`` sizes, each ``octave_scale`` times smaller
  than the next, smallest first; the detail the dream added at one octave (dreamed minus
  that octave's base image) is upscaled and added to the next octave's base;
* jitter: before each step the image is rolled (``torch.roll``) by a random shift of up to
  ``jitter`` pixels from the run's seeded generator, and the gradient is rolled back, so
  the shift is undone exactly;
* tiles: the gradient is computed tile by tile (``tile`` pixels square at most), so a 4K
  photograph never needs 4K activations at once; the roll moves the seams every step;
* optional Gaussian smoothing of the gradient (``smooth``, in pixels).

The objective is, summed over the layers, the mean squared activation (``deepdream``),
one channel's mean activation (``channel``), or the match with a guide image's features
(``guide``: each position's features dotted with the best-matching feature vector of the
guide, as in Google's DeepDream notebook). The network runs only up to the deepest layer;
the caller's model comes back with its flags, ``requires_grad``, ``.grad`` and hooks as
they were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import ImageError, LayerError, VistoolError
from ..core.hooks import forward_until
from ..core.imageio import gaussian_blur as _gaussian
from ..core.imageio import normalisation
from ..core.imageio import resize as _resize
from ..core.layers import resolve_layers
from ..core.progress import Progress, progress_bar, show
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..drawing import image_grid, png_bytes
from . import objectives as obj

__all__ = ["DreamResult", "deepdream", "guided", "octave_sizes", "roll", "tiled_gradient"]

#: Positions x guide positions compared at once by :func:`guided` (bounds its memory).
_MATCH_CHUNK = 1 << 22


@dataclass
class DreamResult:
    """What :func:`deepdream` made.

    Attributes:
        images: (N, C, H, W) in [0, 1], the dreamed images at the input's size.
        octaves: the dreamed images at the end of each octave, smallest first, each
            (N, C, h, w) in [0, 1]; the last is ``images``.
        sizes: (h, w) of each octave, smallest first.
        history: (octaves x steps, N) the objective of every image at every step, before
            that step's update (the tile-area weighted mean of the tiles' objectives).
        layers: the dreamed layers.
        objective: the objective in words (``deepdream(features.28)`` ...).

    In a notebook the result shows itself: the dreamed images.
    """

    images: torch.Tensor
    octaves: list[torch.Tensor]
    sizes: list[tuple[int, int]]
    history: torch.Tensor
    layers: list[str]
    objective: str

    def _repr_png_(self) -> bytes:
        return png_bytes(image_grid(self.images.detach().cpu()))


@dataclass(frozen=True)
class _Ascent:
    """The settings of one step of gradient ascent."""

    lr: float
    jitter: int
    tile: int
    smooth: float
    mean: torch.Tensor
    std: torch.Tensor


def guided(layer: str, features: torch.Tensor) -> obj.Objective:
    """Match ``layer``'s features to a guide's: the mean over positions of each position's
    feature vector dotted with the guide feature vector it matches best (Google's
    DeepDream notebook; its gradient at a position is that best guide vector).

    Args:
        layer: the layer (its output (N, C, h, w)).
        features: the guide's output of ``layer``, (1 or N, C, gh, gw).
    """

    def fn(acts):
        act = acts[layer].flatten(2)  # (N, C, P)
        guide = features.to(act).flatten(2).expand(act.shape[0], -1, -1)  # (N, C, Q)
        with torch.no_grad():
            rows = max(1, _MATCH_CHUNK // guide.shape[2])
            best = torch.cat([(act[:, :, i:i + rows].transpose(1, 2) @ guide).argmax(2)
                              for i in range(0, act.shape[2], rows)], 1)  # (N, P)
        matched = guide.gather(2, best[:, None].expand(-1, guide.shape[1], -1))
        return (act * matched).sum(1).mean(1)

    return obj.Objective(fn, [layer], f"guided({layer})")


def roll(images: torch.Tensor, shift: tuple[int, int], inverse: bool = False) -> torch.Tensor:
    """``images`` rolled by ``shift`` = (rows, columns) pixels (wrapping around), or by
    minus ``shift`` when ``inverse``: ``roll(roll(x, s), s, inverse=True)`` is ``x``.

    Args:
        images: (..., H, W).
        shift: (rows, columns) to roll down and right.
        inverse: roll the other way (undo a roll by ``shift``).
    """
    sign = -1 if inverse else 1
    return torch.roll(images, (sign * shift[0], sign * shift[1]), dims=(-2, -1))


def _windows(length: int, tile: int) -> list[tuple[int, int, int]]:
    """Tiles along one axis as (start, first owned pixel, end): every tile is
    ``min(tile, length)`` long; the last one starts early (overlapping its neighbour) and
    owns only the pixels no other tile owns."""
    if length <= tile:
        return [(0, 0, length)]
    count = math.ceil(length / tile)
    return [(min(i * tile, length - tile), i * tile, min((i + 1) * tile, length))
            for i in range(count)]


def tiled_gradient(model: nn.Module, objective: obj.Objective, images: torch.Tensor,
                   tile: int, mean: torch.Tensor, std: torch.Tensor):
    """The gradient of ``objective`` with respect to ``images``, one tile at a time.

    Each tile is normalised with ``mean``/``std`` and run up to the objective's layers on
    its own; its gradient, scaled by the tile's share of the image, fills the pixels the
    tile owns. With one tile this is the gradient of the objective of the whole image.

    Args:
        model: the network (frozen by the caller).
        objective: what to maximise, per image (N,).
        images: (N, C, H, W) in [0, 1].
        tile: the largest tile side in pixels.
        mean, std: the model's normalisation, broadcastable to ``images``.

    Returns:
        ``(gradient, value)``: (N, C, H, W) and the tile-area weighted objective (N,).
    """
    height, width = images.shape[-2:]
    grad = torch.zeros_like(images)
    value = images.new_zeros(images.shape[0])
    for top, own_top, bottom in _windows(height, tile):
        for left, own_left, right in _windows(width, tile):
            crop = images[..., top:bottom, left:right].detach().requires_grad_(True)
            score = objective(forward_until(model, (crop - mean) / std, objective.layers))
            (part,) = torch.autograd.grad(score.sum(), crop)
            grad[..., own_top:bottom, own_left:right] = (
                part[..., own_top - top:, own_left - left:]
                * (crop.shape[-2] * crop.shape[-1] / (height * width)))
            value += score.detach() * ((bottom - own_top) * (right - own_left)
                                       / (height * width))
    return grad, value


def _step(model: nn.Module, objective: obj.Objective, images: torch.Tensor,
          generator: torch.Generator, ascent: _Ascent):
    """One step of jittered, tiled, normalised gradient ascent; returns (images, value)."""
    shift = (0, 0)
    if ascent.jitter:
        shift = tuple(torch.randint(-ascent.jitter, ascent.jitter + 1, (2,),
                                    generator=generator).tolist())
    grad, value = tiled_gradient(model, objective, roll(images, shift), ascent.tile,
                                 ascent.mean, ascent.std)
    grad = roll(grad, shift, inverse=True)
    if ascent.smooth > 0:
        grad = _gaussian(grad, ascent.smooth)
    scale = grad.abs().flatten(1).mean(1).clamp(min=1e-12)[:, None, None, None]
    return grad.mul_(ascent.lr / scale).add_(images).clamp_(0, 1), value


def octave_sizes(height: int, width: int, octaves: int,
                 octave_scale: float) -> list[tuple[int, int]]:
    """The (h, w) of each octave, smallest first; the last is (``height``, ``width``).

    Args:
        height, width: the input's size.
        octaves: how many sizes.
        octave_scale: each octave is this many times smaller than the next.
    """
    return [(max(1, round(height / octave_scale**k)), max(1, round(width / octave_scale**k)))
            for k in reversed(range(octaves))]


def _runs(model: nn.Module, inputs: torch.Tensor, layers: Sequence[str]) -> dict | None:
    """The layers' outputs for ``inputs`` (a truncated forward without gradients), or None
    when the network cannot take an input that small."""
    try:
        with torch.no_grad():
            return forward_until(model, inputs, layers, gradients=False)
    except (RuntimeError, ValueError):
        return None


def _minimum_side(model: nn.Module, channels: int, layers: Sequence[str],
                  device: torch.device, upper: int) -> int:
    """The smallest square input side (up to ``upper``) the network runs up to ``layers``."""
    low, high = 1, upper
    while low < high:
        middle = (low + high) // 2
        if _runs(model, torch.zeros(1, channels, middle, middle, device=device),
                 layers) is None:
            low = middle + 1
        else:
            high = middle
    return low


def _fixes(height: int, width: int, octaves: int, octave_scale: float, minimum: int) -> str:
    """What to change so that every octave is at least ``minimum`` pixels on each side."""
    def fits(count, scale):
        return min(octave_sizes(height, width, count, scale)[0]) >= minimum

    count = max(k for k in range(1, octaves + 1) if fits(k, octave_scale))
    fixes = [f"`octaves={count}` or fewer"]
    scale = math.floor(100 * (min(height, width) / minimum) ** (1 / (octaves - 1))) / 100
    while scale > 1 and not fits(octaves, scale):
        scale = round(scale - 0.01, 2)
    if scale > 1:
        fixes.append(f"`octave_scale={scale:g}` or less")
    return ", or ".join(fixes)


def _check_size(loaded: LoadedModel, size: tuple[int, int], layers: list[str], octaves: int,
                octave_scale: float, tile: int) -> dict:
    """A dry truncated forward of the smallest tile any octave will use; a clear error when
    the network cannot take it. Returns the layers' outputs for that input."""
    sizes = octave_sizes(*size, octaves, octave_scale)
    smallest = (min(tile, sizes[0][0]), min(tile, sizes[0][1]))
    channels = loaded.input_size[0]
    acts = _runs(loaded.model, torch.zeros(1, channels, *smallest, device=loaded.device),
                 layers)
    if acts is not None:
        return acts
    minimum = _minimum_side(loaded.model, channels, layers, loaded.device, max(*size, tile))
    needs = f"the {minimum}x{minimum} pixels the network needs up to {', '.join(layers)}"
    if min(size) < minimum:
        raise ImageError(f"the image is {size[0]}x{size[1]}, smaller than {needs}; "
                         "use a larger image or shallower layers")
    if tile < minimum:
        raise VistoolError(f"tiles of {tile} pixels are smaller than {needs}; "
                           f"use `tile={minimum}` or more")
    raise VistoolError(
        f"with `octaves={octaves}` and `octave_scale={octave_scale:g}` the smallest octave is "
        f"{sizes[0][0]}x{sizes[0][1]}, smaller than {needs}; use "
        + _fixes(*size, octaves, octave_scale, minimum))


def _check_options(images: torch.Tensor, channels: int, octaves: int, octave_scale: float,
                   steps: int, ascent: tuple[float, int, int, float]) -> None:
    lr, jitter, tile, smooth = ascent
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise ImageError(f"images must be a batch (N, C, H, W), got shape "
                         f"{tuple(getattr(images, 'shape', ()))}")
    if images.numel() == 0:
        raise ImageError(f"images of shape {tuple(images.shape)} are empty; give at least "
                         "one image of at least one pixel")
    if images.shape[1] != channels:
        raise ImageError(f"images have {images.shape[1]} channels, the model takes {channels}")
    if images.min() < 0 or images.max() > 1:
        raise ImageError("images must be in [0, 1] (not normalised); undo a model's "
                         "preprocessing with vistool.deprocess first")
    if steps < 1 or octaves < 1 or tile < 1:
        raise VistoolError(f"steps ({steps}), octaves ({octaves}) and tile ({tile}) must be "
                           "at least 1; give e.g. `steps=10` `octaves=4` `tile=512`")
    if octave_scale <= 1 or lr < 0 or jitter < 0 or smooth < 0:
        raise VistoolError(f"octave scale ({octave_scale:g}) must be above 1 and lr ({lr:g}), "
                           f"jitter ({jitter}) and smooth ({smooth:g}) not negative; "
                           "give e.g. `octave_scale=1.4`")


def _objective(loaded: LoadedModel, layers: list[str], acts: dict, channel: int | None,
               guide: torch.Tensor | None) -> obj.Objective:
    """The objective summed over ``layers``, checked against their dry-run outputs ``acts``."""
    parts = []
    for layer in layers:
        act = acts[layer]
        if (channel is not None or guide is not None) and (
                not isinstance(act, torch.Tensor) or act.dim() != 4):
            raise LayerError(f"layer {layer!r} outputs shape "
                             f"{tuple(getattr(act, 'shape', ()))}, not (N, C, H, W); `channel` "
                             "and `guide` need a convolutional layer")
        if not isinstance(act, torch.Tensor):
            raise LayerError(f"layer {layer!r} does not output a tensor; pick another layer")
        if channel is not None and not 0 <= channel < act.shape[1]:
            raise VistoolError(f"channel {channel} is out of range: layer {layer!r} has "
                               f"{act.shape[1]} channels (0-{act.shape[1] - 1})")
        if guide is not None:
            parts.append(guided(layer, _features(loaded, guide, layer)))
        elif channel is not None:
            parts.append(obj.channel(layer, channel))
        else:
            parts.append(obj.deepdream(layer))
    return sum(parts[1:], parts[0])


def _features(loaded: LoadedModel, guide: torch.Tensor, layer: str) -> torch.Tensor:
    """The guide's output of ``layer`` at the guide's own size."""
    mean, std = normalisation(loaded.mean, loaded.std, loaded.device)
    acts = _runs(loaded.model, (guide.to(mean) - mean) / std, [layer])
    if acts is None:
        raise ImageError(f"the guide ({guide.shape[-2]}x{guide.shape[-1]}) is too small for "
                         f"the network up to {layer}; use a larger guide image")
    return acts[layer]


def _check_guide(guide: torch.Tensor | None, images: torch.Tensor,
                 channel: int | None) -> None:
    if guide is None:
        return
    if channel is not None:
        raise VistoolError("give either a channel or a guide image, not both")
    count = images.shape[0]
    if guide.dim() != 4 or guide.shape[0] not in (1, count) or guide.shape[1] != images.shape[1]:
        raise ImageError(f"the guide must be (1 or {count}, {images.shape[1]}, h, w) in [0, 1], "
                         f"got shape {tuple(guide.shape)}")
    if guide.min() < 0 or guide.max() > 1:
        raise ImageError("the guide must be in [0, 1] (not normalised)")


def deepdream(loaded: LoadedModel, images: torch.Tensor, layers: str | Sequence[str],
              channel: int | None = None, guide: torch.Tensor | None = None, octaves: int = 4,
              octave_scale: float = 1.4, steps: int = 10, lr: float = 0.01, jitter: int = 32,
              tile: int = 512, smooth: float = 0.0, seed: int = 0,
              progress: Progress = False) -> DreamResult:
    """Dream: amplify what ``layers`` detect in ``images`` by gradient ascent on the pixels.

    Args:
        loaded: the model (:func:`vistool.load_model`); its ``mean``/``std`` normalise the
            images inside, its ``input_size`` is ignored (DeepDream works at any size).
        images: (N, C, H, W) in [0, 1], unnormalised (a preprocessed batch goes through
            :func:`vistool.deprocess` first); any size, all of a batch the same.
        layers: one layer name or several (the objective is summed over them); a
            convolution followed by an in-place ReLU is seen before the ReLU.
        channel: maximise this channel's mean activation (in every layer) instead of the
            mean squared activation.
        guide: (1 or N, C, h, w) in [0, 1], any size: match the guide's features instead
            (:func:`guided`); not with ``channel``.
        octaves: how many image sizes, smallest first (1: the input's size only).
        octave_scale: each octave is this many times smaller than the next (above 1).
        steps: gradient steps per octave.
        lr: the step, times the gradient divided by its mean absolute value ([0, 1] pixels).
        jitter: the largest random roll in pixels before each step (undone after it).
        tile: the largest tile side in pixels for the gradient (bounds the memory).
        smooth: the sigma in pixels of a Gaussian blur of the gradient (0: none).
        seed: seeds the one generator of the rolls; the same seed gives the same images.
        progress: True for a progress bar on stderr, or a callable ``report(done, total,
            image)`` (:mod:`vistool.core.progress`).

    Raises:
        ImageError, LayerError, VistoolError: bad images, layer names (with suggestions),
            options, or octaves that shrink the image below what the network can take
            (the message says which ``octaves``/``octave_scale`` fixes it).
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise LayerError("no layers given; name at least one layer (e.g. features.28)")
    _check_options(images, loaded.input_size[0], octaves, octave_scale, steps,
                   (lr, jitter, tile, smooth))
    _check_guide(guide, images, channel)
    resolve_layers(loaded.model, names)
    with preserved_state(loaded.model, eval_mode=True, frozen=True):
        acts = _check_size(loaded, tuple(images.shape[-2:]), names, octaves, octave_scale, tile)
        objective = _objective(loaded, names, acts, channel, guide)
        mean, std = normalisation(loaded.mean, loaded.std, loaded.device)
        ascent = _Ascent(lr, jitter, tile, smooth, mean, std)
        sizes = octave_sizes(*images.shape[-2:], octaves, octave_scale)
        dreams, history = _dream(loaded.model, objective, images.to(mean), sizes, steps,
                                 ascent, torch.Generator().manual_seed(seed), progress)
    return DreamResult(dreams[-1], dreams, sizes, history, names, objective.name)


def _dream(model: nn.Module, objective: obj.Objective, images: torch.Tensor,
           sizes: list[tuple[int, int]], steps: int, ascent: _Ascent,
           generator: torch.Generator, progress: Progress):
    """Every octave, smallest first, carrying the dream's detail up; (dreams, history)."""
    dreams, history = [], []
    detail = torch.zeros_like(_resize(images, sizes[0]))
    bar = progress_bar(len(sizes) * steps, "deepdream", progress)
    try:
        with torch.enable_grad():
            for octave, size in enumerate(sizes, 1):
                base = _resize(images, size)
                dream = (base + _resize(detail, size)).clamp_(0, 1)
                for _ in range(steps):
                    dream, value = _step(model, objective, dream, generator, ascent)
                    history.append(value)
                    bar.update()
                dreams.append(dream)
                show(bar, dream)
                if octave < len(sizes):
                    detail = dream - base
    finally:
        bar.close()
    return dreams, torch.stack(history)
