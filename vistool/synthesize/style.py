"""Neural style transfer by optimisation (Gatys, Ecker and Bethge, 2016).

An image is optimised so that its features at ``content_layers`` match the content image's
and the Gram matrices of its features at ``style_layers`` match the style's (a weighted
blend of the Grams of several styles), with a total-variation penalty. Layers take the
paper's VGG names (``conv4_2``: block 4, second convolution; blocks end at each pooling
layer) or module names (``features.21``). Convolutions are seen before their in-place ReLU,
as the PyTorch tutorial sees them; name ``relu4_2`` for the rectified value.

The losses do not depend on the image size: Grams are divided by C·H·W and every loss is a
mean. The optimiser sees the total divided by its value at the scale's first image, so
L-BFGS's absolute tolerances mean the same at any size, for any weights and any network.
The style Grams are computed once per scale, the network runs only up to the deepest loss
layer, and the caller's model comes back unchanged (average pooling runs on a private copy
that shares the weights).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import LayerError, VistoolError, suggestion
from ..core.hooks import forward_until
from ..core.imageio import normalisation, resize
from ..core.layers import layer_names
from ..core.progress import Progress, progress_bar, show
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..drawing import png_bytes
from . import objectives
from .objectives import INPUT

__all__ = [
    "COLOR_MODES",
    "INITS",
    "OPTIMIZERS",
    "POOLINGS",
    "StyleResult",
    "gram_matrix",
    "layer_features",
    "match_color",
    "paper_layer_names",
    "resolve_style_layers",
    "style_transfer",
]

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "noise", "style")
COLOR_MODES = ("luminance", "histogram")
POOLINGS = ("max", "avg")
CONTENT_LAYERS = ("conv4_2",)
STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
_DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
_TOLERANCE_GRAD = 1e-5  # largest gradient of (loss relative to its start) x pixel count
# RGB -> YIQ (NTSC): Y is the luminance, I and Q the chroma.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


@dataclass
class StyleResult:
    """What :func:`style_transfer` made.

    Attributes:
        image: (1, 3, H, W) in [0, 1], the stylised image (colour preservation applied).
        history: (evaluations, 4) the weighted losses total, content, style and tv at each
            evaluation, before that evaluation's update (row 0 is the initial image's).
        seconds: (evaluations,) seconds since the optimisation started, at each evaluation.
        final: (4,) the same losses of the optimised image, clamped, before colour
            preservation.
        sizes: (H, W) of each scale, coarse to fine.
        scale_starts: the row of ``history`` where each scale begins.
        layers: {"content": [...], "style": [...]}, the module names used.

    In a notebook the result shows itself: the stylised image.
    """

    image: torch.Tensor
    history: torch.Tensor
    seconds: torch.Tensor
    final: torch.Tensor
    sizes: list[tuple[int, int]]
    scale_starts: list[int]
    layers: dict[str, list[str]]

    def _repr_png_(self) -> bytes:
        return png_bytes(self.image[0].detach().cpu())


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrices (N, C, C) of features (N, C, H, W), divided by C·H·W so that a texture
    and its tiling have the same Gram (the style loss does not depend on the image size).

    Args:
        features: a batch of feature maps (N, C, H, W).

    Always in float32 (or float64 for float64 features), also under autocast: a sum over
    H·W products overflows float16 at 256² and loses digits in bfloat16.
    """
    n, c, h, w = features.shape
    if features.dtype not in (torch.float32, torch.float64):
        features = features.float()
    flat = features.reshape(n, c, h * w)
    kind = features.device.type
    with (torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind)
          else contextlib.nullcontext()):
        # One matrix product per image: on a CPU torch's mm is up to 1.6x faster than bmm.
        return torch.stack([f @ f.T for f in flat]) / (c * h * w)


def paper_layer_names(model: nn.Module) -> dict[str, str]:
    """The paper's names of a VGG's layers mapped to module names: ``conv{b}_{i}`` is the
    i-th convolution of block b (blocks end at each pooling layer), ``relu{b}_{i}`` the
    ReLU right after it. For torchvision's vgg19: conv1_1 -> features.0, conv4_2 ->
    features.21, conv5_1 -> features.28.

    Args:
        model: any module; its convolutions and pooling layers are counted in
            ``named_modules()`` order.
    """
    names: dict[str, str] = {}
    block, conv, last = 1, 0, None
    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            conv += 1
            last = f"{block}_{conv}"
            names[f"conv{last}"] = name
        elif isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            block, conv, last = block + 1, 0, None
        elif isinstance(module, nn.ReLU) and last is not None:
            names[f"relu{last}"] = name
            last = None
        elif not list(module.children()):
            last = None
    return names


def resolve_style_layers(model: nn.Module, names: Sequence[str]) -> list[str]:
    """Module names of ``names``, each a paper name (``conv4_2``) or a module name.

    Args:
        model: the network.
        names: layer names.

    Raises:
        LayerError: a name is neither; the message lists the closest names.
    """
    paper, modules = paper_layer_names(model), layer_names(model)
    resolved = []
    for name in names:
        if name in paper:
            resolved.append(paper[name])
        elif name in modules:
            resolved.append(name)
        else:
            raise LayerError(f"no layer named {name!r} in {type(model).__name__} (give a "
                             "paper name such as conv4_2 or a module name)"
                             + suggestion(name, [*paper, *modules], "layers with 'vistool "
                                          "layers'"))
    return resolved


def layer_features(model: nn.Module, inputs: torch.Tensor,
                   layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """The outputs of ``layers`` (module names) for normalised ``inputs``, the network run
    only as far as the deepest (in the autograd graph when gradients are enabled).

    Raises:
        VistoolError: the images are too small for the deepest layer.
    """
    try:
        return forward_until(model, inputs, layers, gradients=torch.is_grad_enabled())
    except RuntimeError as exc:
        if "too small" not in str(exc):
            raise
        raise VistoolError(f"an image of {inputs.shape[-2]}x{inputs.shape[-1]} pixels is too "
                           "small for the deepest layer; give larger images or "
                           "`scales`") from None


def _colour_statistics(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (3, 1) on the pixels' device and covariance (3, 3) on the CPU in float64 of
    pixels (3, P)."""
    mean = pixels.mean(1, keepdim=True)
    centred = pixels - mean
    return mean, (centred @ centred.T / pixels.shape[1]).cpu().double()


def _covariance_sqrt(covariance: torch.Tensor, inverse: bool) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(covariance)
    power = -0.5 if inverse else 0.5
    return vectors @ torch.diag(values.clamp(min=1e-10) ** power) @ vectors.T


def match_color(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` with the colour mean and covariance of ``target`` (an affine map of its
    RGB values, the symmetric square roots of the covariances), clamped to [0, 1].

    Args:
        source: (1, 3, h, w) in [0, 1], e.g. a style image.
        target: (1, 3, H, W) in [0, 1] whose colour statistics to take, e.g. the content.
    """
    src = source[0].reshape(3, -1).float()
    dst = target[0].reshape(3, -1).to(src)
    (src_mean, src_cov), (dst_mean, dst_cov) = _colour_statistics(src), _colour_statistics(dst)
    matrix = _covariance_sqrt(dst_cov, inverse=False) @ _covariance_sqrt(src_cov, inverse=True)
    out = matrix.to(src) @ (src - src_mean) + dst_mean
    return out.reshape(source.shape).to(source.dtype).clamp(0, 1)


def _keep_content_color(image: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The luminance (Y) of ``image`` with the chroma (I, Q) of ``content``."""
    yiq = _YIQ.to(image)
    mixed = torch.cat([torch.einsum("dc,nchw->ndhw", yiq[:1], image),
                       torch.einsum("dc,nchw->ndhw", yiq[1:], content)], 1)
    return torch.einsum("dc,nchw->ndhw", torch.linalg.inv(yiq), mixed).clamp(0, 1)


def _with_avg_pooling(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose MaxPool2d layers are AvgPool2d; the copy shares the
    parameters and buffers (no memory), the caller's modules are untouched."""
    memo = {id(t): t for t in (*model.parameters(), *model.buffers())}
    twin = copy.deepcopy(model, memo)
    for name, module in list(twin.named_modules()):
        if isinstance(module, nn.MaxPool2d):
            parent_name, _, child = name.rpartition(".")
            parent = twin.get_submodule(parent_name)
            setattr(parent, child, nn.AvgPool2d(module.kernel_size, module.stride,
                                                module.padding, module.ceil_mode))
    return twin


#: ``image`` resized (bilinear, antialiased) to ``size`` (H, W) and clamped to [0, 1]; as it
#: is when it has that size.
_resize = functools.partial(resize, antialias=True, clamp=True)


def _scaled(size: tuple[int, int], longer: int) -> tuple[int, int]:
    """``size`` (H, W) scaled so that its longer side is ``longer``."""
    factor = longer / max(size)
    return max(1, round(size[0] * factor)), max(1, round(size[1] * factor))


@dataclass(frozen=True)
class _Setup:
    """The checked options of one call."""

    model: nn.Module
    mean: torch.Tensor
    std: torch.Tensor
    content_layers: list[str]
    style_layers: list[str]
    blend: list[float]
    weights: tuple[float, float, float]
    optimizer: str
    steps: int
    lr: float
    init: str


class _StyleLoss:
    """The weighted losses (total, content, style, tv) of an image against targets computed
    once: the content's features and the blended Gram matrices of the styles."""

    def __init__(self, setup: _Setup, content: torch.Tensor, styles: list[torch.Tensor]):
        self.setup = setup
        with torch.no_grad():
            feats = self._features(content)
            self.content = [feats[name] for name in setup.content_layers]
            grams = [[gram_matrix(f[name]) for name in setup.style_layers]
                     for f in map(self._features, styles)]
            self.grams = [sum(w * g[i] for w, g in zip(setup.blend, grams))
                          for i in range(len(setup.style_layers))]

    def _features(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        setup = self.setup
        return layer_features(setup.model, (image - setup.mean) / setup.std,
                              [*setup.content_layers, *setup.style_layers])

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        feats = self._features(image)
        zero = image.new_zeros(())
        content = sum((F.mse_loss(feats[name], target)
                       for name, target in zip(self.setup.content_layers, self.content)), zero)
        style = sum((F.mse_loss(gram_matrix(feats[name]), target)
                     for name, target in zip(self.setup.style_layers, self.grams)), zero)
        tv = objectives.total_variation()({INPUT: image}).sum()
        cw, sw, tw = self.setup.weights
        parts = torch.stack([cw * content, sw * style, tw * tv])
        return torch.cat([parts.sum()[None], parts])


class _Recorder:
    """The closure the optimisers call: loss relative to its first value, gradient into
    ``image.grad`` (``autograd.grad``, nothing into the weights), history and progress."""

    def __init__(self, loss: _StyleLoss, image: torch.Tensor, start: float, bar):
        self.loss, self.image, self.start, self.bar = loss, image, start, bar
        self.rows: list[torch.Tensor] = []
        self.times: list[float] = []
        self.norm: torch.Tensor | None = None

    def __call__(self) -> torch.Tensor:
        losses = self.loss(self.image)
        if self.norm is None:
            first = losses[0].detach()
            self.norm = first if bool(torch.isfinite(first) & (first > 0)) else first.new_ones(())
        relative = losses[0] / self.norm
        (self.image.grad,) = torch.autograd.grad(relative, [self.image])
        self.rows.append(losses.detach())
        self.times.append(time.perf_counter() - self.start)
        self.bar.update()
        if len(self.rows) % max(1, self.bar.total // 10) == 0:
            show(self.bar, self.image.detach().clamp(0, 1))  # a tenth of the way further
        return relative.detach()


def _run_lbfgs(recorder: _Recorder, steps: int, lr: float) -> None:
    """One L-BFGS iteration per call of ``step``, the image clamped to [0, 1] after each;
    the step L-BFGS remembers (its ``d * t``) becomes the step taken, so its curvature
    pairs stay true. Stops early only at a stationary point (gradient below tolerance)."""
    image = recorder.image
    optimizer = torch.optim.LBFGS([image], lr=lr, max_iter=1, max_eval=1,
                                  tolerance_grad=_TOLERANCE_GRAD / image.numel())
    state = optimizer.state[image]
    for _ in range(steps):
        iterations = state.get("n_iter", 0)
        optimizer.step(recorder)
        if state["n_iter"] == iterations:
            break  # converged: the gradient is below the tolerance
        with torch.no_grad():
            moved = image.clamp(0, 1) - image
            image.add_(moved)
            state["d"].add_(moved.flatten(), alpha=1 / float(state["t"]))


def _run_adam(recorder: _Recorder, steps: int, lr: float) -> None:
    """``steps`` Adam steps, the image clamped to [0, 1] after each."""
    optimizer = torch.optim.Adam([recorder.image], lr=lr)
    for _ in range(steps):
        recorder()
        optimizer.step()
        with torch.no_grad():
            recorder.image.clamp_(0, 1)


def _initial(setup: _Setup, content: torch.Tensor, styles: list[torch.Tensor],
             previous: torch.Tensor | None, generator: torch.Generator) -> torch.Tensor:
    """The image a scale starts from: the previous scale's result upsampled, else the
    content, uniform noise drawn from ``generator`` or the first style resized."""
    size = tuple(content.shape[-2:])
    if previous is not None:
        image = _resize(previous, size)
    elif setup.init == "noise":
        image = torch.rand(content.shape, generator=generator).to(content)
    elif setup.init == "style":
        image = _resize(styles[0], size)
    else:
        image = content
    return image.detach().clone().clamp(0, 1).requires_grad_(True)


def _optimise(setup: _Setup, content: torch.Tensor, styles: list[torch.Tensor],
              sizes: list[tuple[int, int]], generator: torch.Generator, progress: Progress):
    """Optimise at each size in turn; styles scale with the content, targets are computed
    once per scale. Returns the image, the history rows, their times, the row where each
    scale starts and the final losses."""
    start = time.perf_counter()
    bar = progress_bar(setup.steps * len(sizes), "style", progress)
    rows, times, starts, image = [], [], [], None
    try:
        for size in sizes:
            factor = max(size) / max(sizes[-1])
            scaled = [_resize(s, _scaled(s.shape[-2:], round(max(s.shape[-2:]) * factor)))
                      for s in styles]
            loss = _StyleLoss(setup, _resize(content, size), scaled)
            recorder = _Recorder(loss, _initial(setup, _resize(content, size), scaled, image,
                                                generator), start, bar)
            starts.append(len(rows))
            run = _run_lbfgs if setup.optimizer == "lbfgs" else _run_adam
            run(recorder, setup.steps, setup.lr)
            image = recorder.image.detach().clamp(0, 1)
            show(bar, image)
            rows += recorder.rows
            times += recorder.times
        with torch.no_grad():
            final = loss(image)
    finally:
        bar.close()
    return image, rows, times, starts, final


def _inputs(loaded: LoadedModel, content: torch.Tensor, styles: Sequence[torch.Tensor],
            style_weights: Sequence[float] | None, preserve_color: str | None):
    """The checked images on the model's device (the styles colour-matched for
    ``"histogram"``) and the style weights summing to 1."""
    for what, image in [("content", content), *[("style", s) for s in styles]]:
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[:2] != (1, 3):
            shape = tuple(getattr(image, "shape", ()))
            raise VistoolError(f"the {what} image must be a (1, 3, H, W) tensor in [0, 1], "
                               f"got shape {shape}")
    if not styles:
        raise VistoolError("no style image given; give at least one")
    blend = [1.0] * len(styles) if style_weights is None else [float(w) for w in style_weights]
    if len(blend) != len(styles) or min(blend) < 0 or sum(blend) <= 0:
        raise VistoolError(f"style weights {blend} do not fit {len(styles)} style image(s): give "
                           "one non-negative weight per style, not all zero (e.g. 0.7,0.3)")
    content = content.detach().float().to(loaded.device)
    styles = [s.detach().float().to(loaded.device) for s in styles]
    if preserve_color == "histogram":
        styles = [match_color(s, content) for s in styles]
    return content, styles, [w / sum(blend) for w in blend]


def _layers(model: nn.Module, content_layers: Sequence[str],
            style_layers: Sequence[str]) -> dict[str, list[str]]:
    """The module names of the content and style layers (at least one layer in all)."""
    names = {"content": resolve_style_layers(model, content_layers),
             "style": resolve_style_layers(model, style_layers)}
    if not names["content"] and not names["style"]:
        raise VistoolError("no content or style layers given; name at least one layer")
    return names


def _check_options(optimizer: str, init: str, preserve_color: str | None, pooling: str,
                   steps: int, lr: float | None, weights: Sequence[float]) -> None:
    """Refuse an unknown choice or a non-positive step count, learning rate or weight."""
    for what, value, choices in [("optimizer", optimizer, OPTIMIZERS), ("init", init, INITS),
                                 ("pooling", pooling, POOLINGS),
                                 ("preserve_color", preserve_color, (None, *COLOR_MODES))]:
        if value not in choices:
            raise VistoolError(f"unknown {what} {value!r}; choose one of "
                               + ", ".join(str(c) for c in choices))
    if steps < 1 or (lr is not None and lr <= 0) or min(weights) < 0:
        raise VistoolError(f"steps ({steps}) and lr ({lr}) must be positive and the loss "
                           f"weights {list(weights)} non-negative")


def _sizes(content: torch.Tensor, scales: Sequence[int] | None) -> list[tuple[int, int]]:
    """(H, W) of each scale: the content's aspect ratio, the longer side of each scale."""
    size = tuple(content.shape[-2:])
    if scales is None:
        return [size]
    if not scales or min(scales) < 1:
        raise VistoolError(f"scales {list(scales)} must be positive sizes in pixels, coarse to "
                           "fine, e.g. 256,512")
    return [_scaled(size, int(s)) for s in scales]


def style_transfer(loaded: LoadedModel, content: torch.Tensor, styles: Sequence[torch.Tensor],
                   style_weights: Sequence[float] | None = None,
                   content_layers: Sequence[str] = CONTENT_LAYERS,
                   style_layers: Sequence[str] = STYLE_LAYERS, content_weight: float = 1.0,
                   style_weight: float = 1e6, tv_weight: float = 0.0,
                   optimizer: str = "lbfgs", steps: int = 300, lr: float | None = None,
                   init: str = "content", preserve_color: str | None = None,
                   scales: Sequence[int] | None = None, pooling: str = "max", seed: int = 0,
                   progress: Progress = False) -> StyleResult:
    """Render ``content`` in the style of ``styles`` (Gatys et al.) by optimising its pixels.

    Args:
        loaded: the network (:func:`vistool.load_model`, e.g. ``"vgg19"``); its mean/std
            normalise the images inside.
        content: (1, 3, H, W) in [0, 1]; the result has its size (or the last scale's).
        styles: style images (1, 3, h, w) in [0, 1], any sizes; used at the size given at the
            last scale and scaled like the content at earlier scales.
        style_weights: one weight per style, blending their Gram targets (default equal).
        content_layers: layers whose features are matched (paper or module names).
        style_layers: layers whose Gram matrices are matched.
        content_weight: weight of the content loss (mean squared feature difference).
        style_weight: weight of the style loss (sum over layers of the mean squared Gram
            difference, Grams divided by C·H·W).
        tv_weight: weight of the total variation (mean absolute neighbour difference);
            0 by default, as in the paper.
        optimizer: ``"lbfgs"`` (steps = function evaluations) or ``"adam"``.
        steps: evaluations per scale (L-BFGS stops earlier once converged).
        lr: learning rate (default 1.0 for L-BFGS, 0.02 for Adam).
        init: start from the ``"content"``, uniform ``"noise"`` or the (first) ``"style"``.
        preserve_color: None, ``"luminance"`` (the result's luminance with the content's
            chroma, YIQ) or ``"histogram"`` (styles given the content's colour mean and
            covariance first, :func:`match_color`).
        scales: longer-side sizes, coarse to fine (``(256, 512)``): each scale starts
            from the previous result, upsampled. Default: the content's size only.
        pooling: ``"max"`` or ``"avg"`` (average pooling in a private copy of the model).
        seed: seeds the noise initialisation (one ``torch.Generator``).
        progress: True for a progress bar on stderr, or a callable ``report(done, total,
            image)`` (:mod:`vistool.core.progress`).

    Raises:
        VistoolError: bad images, options or layer names (a ``LayerError``), in one line.
    """
    _check_options(optimizer, init, preserve_color, pooling, steps, lr,
                   (content_weight, style_weight, tv_weight))
    content, styles, blend = _inputs(loaded, content, styles, style_weights, preserve_color)
    sizes = _sizes(content, scales)
    names = _layers(loaded.model, content_layers, style_layers)
    work = _with_avg_pooling(loaded.model) if pooling == "avg" else loaded.model
    with preserved_state(work, eval_mode=True, frozen=True), torch.enable_grad():
        setup = _Setup(work, *normalisation(loaded.mean, loaded.std, content.device),
                       names["content"], names["style"], blend,
                       (content_weight, style_weight, tv_weight), optimizer, steps,
                       _DEFAULT_LR[optimizer] if lr is None else lr, init)
        image, rows, times, starts, final = _optimise(
            setup, content, styles, sizes, torch.Generator().manual_seed(seed), progress)
    if preserve_color == "luminance":
        image = _keep_content_color(image, _resize(content, tuple(image.shape[-2:])))
    return StyleResult(image, torch.stack(rows).cpu(), torch.tensor(times), final.cpu(),
                       sizes, starts, names)
