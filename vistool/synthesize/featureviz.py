"""Feature visualisation: the images that maximise a layer's channels or a class's score.

:func:`render_filters` renders one channel per batch element, all in the same forward and
backward pass, in chunks that fit the device; :func:`render_classes` does the same for
class logits; :func:`first_layer_weights` shows a first convolution's kernels as images.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import torch
from torch import nn

from ..core.errors import LayerError, TargetError, VistoolError
from ..core.hooks import OUTPUT, forward_until
from ..core.imageio import normalisation
from ..core.layers import resolve_layers
from ..core.layout import grid_view
from ..core.progress import Progress, progress_bar
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..drawing import image_grid, png_bytes
from . import objectives as obj
from .optimize import evaluate, optimize
from .param import make_param
from .transform import Transforms

__all__ = ["FeatureVisualization", "first_layer_weights", "render", "render_classes",
           "render_filters"]


@dataclass
class FeatureVisualization:
    """Images that maximise channels or classes, with how well they do.

    Attributes:
        images: (K, C, H, W) in [0, 1], one per target.
        targets: the channel (or class) index of each image.
        activations: (K,) the objective of each final image as it is.
        robust_activations: (K,) its mean over random transformations of the final image.
        history: (steps, K) the objective at every step.
        layer: the layer of the channels (None for classes and objectives).
        kind: ``"channel"``, ``"class"`` or ``"objective"`` (:func:`render`).
        objective: what was maximised, in words (:func:`render`).

    In a notebook the result shows itself: the images as one grid, in target order.
    """

    images: torch.Tensor
    targets: list[int]
    activations: torch.Tensor
    robust_activations: torch.Tensor
    history: torch.Tensor
    layer: str | None
    kind: str
    objective: str | None = None

    def _repr_png_(self) -> bytes:
        return png_bytes(image_grid(self.images.detach().cpu()))


@dataclass(frozen=True)
class _Run:
    size: tuple[int, int, int]
    steps: int
    lr: float
    param: str
    transforms: Transforms
    seed: int
    batch_size: int
    robust_samples: int
    redirect_relu: bool = True
    final_lr: float = 0.1  # the learning rate decays to this fraction of its peak (cosine)...
    warmup: float = 0.25  # ...after rising linearly to it over this fraction of the steps
    adapt: bool = True  # the peak and the warm-up follow the step count (_adapted)


#: the step count the warm-up and cosine schedule is made for; shorter runs adapt it
FULL_STEPS = 256


def _adapted(run: _Run) -> tuple[float, float, int]:
    """The peak learning rate, the final one and the warm-up steps of ``run``.

    At ``FULL_STEPS`` steps and more: ``lr``, warming up over a quarter of the steps. A
    shorter run is far from its optimum when it ends, and its images gain with the distance
    they travel, so it takes larger steps and warms up for less: the peak is ``lr`` times
    ``sqrt(FULL_STEPS / steps)`` (at most 2x: 2x at 64 steps and below, 1.41x at 128) and
    the warm-up a quarter of the steps times ``steps / FULL_STEPS`` (1 step of 32, 16 of
    128). Measured on vgg16 ``features.16`` (scripts/bench_featureviz.py), the images' mean
    transform-robust activation against the unadapted schedule: 1.57x at 32 steps, 1.41x
    at 64, 1.15x at 128."""
    if not run.adapt:
        return run.lr, run.lr * run.final_lr, int(run.warmup * run.steps)
    short = min(run.steps / FULL_STEPS, 1.0) if run.steps else 1.0
    peak = run.lr * min(short ** -0.5, 2.0)
    return peak, peak * run.final_lr, int(run.warmup * run.steps * short)


def _generators(seed: int, targets: Sequence[int], salt: int = 0) -> list[torch.Generator]:
    """One generator per target, seeded by (seed, target): a target's image is the same
    whichever batch it is rendered in."""
    return [torch.Generator().manual_seed((seed * 1_000_003 + t) * 4 + salt) for t in targets]


def _chunk_size(device: torch.device, requested: int | None) -> int:
    if requested is not None:
        return requested
    # On a CPU the cost per image grows with the batch; a GPU fills up with larger ones.
    return 32 if device.type == "cuda" else 8


def _render(loaded: LoadedModel, make_objective: Callable[[list[int]], obj.Objective],
            targets: list[int], run: _Run, progress: Progress, desc: str,
            start: torch.Tensor | None = None):
    """Optimise every target's image (from ``start``, one image per target, when given),
    chunk by chunk; returns images, plain and robust final values, and the history."""
    chunks = [targets[i:i + run.batch_size] for i in range(0, len(targets), run.batch_size)]
    bar = progress_bar(run.steps * len(chunks), desc, progress)
    images, plain, robust, history = [], [], [], []
    try:
        for first, chunk in zip(range(0, len(targets), run.batch_size), chunks):
            objective = make_objective(chunk)
            param = make_param(run.param, run.size, _generators(run.seed, chunk))
            if start is not None:
                param.set_images(start[first:first + len(chunk)].clamp(1e-3, 1 - 1e-3))
            peak, final, warmup = _adapted(run)
            done = optimize(loaded.model, objective, param, _generators(run.seed, chunk, 1),
                            run.steps, peak, run.transforms, loaded.mean, loaded.std,
                            callback=lambda _step, _values: bar.update(),
                            final_lr=final, warmup=warmup, redirect_relu=run.redirect_relu)
            images.append(done.images.cpu())
            history.append(done.history.cpu())
            plain.append(evaluate(loaded.model, objective, done.images, loaded.mean,
                                  loaded.std).cpu())
            robust.append(plain[-1] if run.transforms.identity else evaluate(
                loaded.model, objective, done.images, loaded.mean, loaded.std, run.transforms,
                _generators(run.seed, chunk, 2), run.robust_samples).cpu())
    finally:
        bar.close()
    return torch.cat(images), torch.cat(plain), torch.cat(robust), torch.cat(history, 1)


def _check_layer(loaded: LoadedModel, layer: str, size: int) -> int:
    """The channel count of ``layer``, whose output must be a spatial grid: (N, C, H, W),
    channels-last or tokens (:func:`vistool.core.layout.grid_view`; one truncated dry run)."""
    x = torch.zeros(1, loaded.input_size[0], max(size, 1), max(size, 1), device=loaded.device)
    with preserved_state(loaded.model, eval_mode=True), torch.no_grad():
        act = forward_until(loaded.model, x, [layer], gradients=False)[layer]
    return grid_view(layer, act, x.shape[2:]).to_grid(act).shape[1]


def _settings(loaded: LoadedModel, size: int, steps: int, lr: float, param: str,
              transforms: Transforms | None, seed: int, batch_size: int | None,
              robust_samples: int, redirect_relu: bool) -> _Run:
    if size < 1 or steps < 0 or lr <= 0 or robust_samples < 1:
        raise VistoolError(f"size ({size}), steps ({steps}), lr ({lr}) and robust samples "
                           f"({robust_samples}) must be positive; give e.g. `size=128`")
    if batch_size is not None and batch_size < 1:
        raise VistoolError(f"batch size must be at least 1, got {batch_size}")
    return _Run((loaded.input_size[0], size, size), steps, lr, param,
                Transforms() if transforms is None else transforms, seed,
                _chunk_size(loaded.device, batch_size), robust_samples, redirect_relu)


def render_filters(loaded: LoadedModel, layer: str, channels: Sequence[int] | None = None,
                   size: int = 128, steps: int = 256, lr: float = 0.05, param: str = "fft",
                   transforms: Transforms | None = None, seed: int = 0,
                   batch_size: int | None = None, robust_samples: int = 8,
                   redirect_relu: bool = True, exchange_steps: int = 0,
                   negative: bool = False, progress: Progress = False) -> FeatureVisualization:
    """Render the image that maximises the mean activation of each channel of ``layer``.

    Args:
        loaded: the model (:func:`vistool.load_model`).
        layer: a layer with (N, C, H, W) output; a convolution followed by an in-place ReLU
            is optimised before the ReLU, name the ReLU for after.
        channels: channel indices (default: the first 64, or all if fewer).
        size: image height and width in pixels (the model sees this size; no upsampling).
        steps, lr: Adam steps and peak learning rate: it rises linearly over the first
            quarter of the steps, then decays on a cosine to a tenth. Below 256 steps the
            peak is ``lr * sqrt(256 / steps)`` (at most ``2 * lr``) and the warm-up
            ``steps / 256`` of a quarter: short runs are as strong as lucent's.
        param: ``"fft"`` (Fourier, 1/f scaled, decorrelated colour) or ``"pixel"``.
        transforms: random transformations every step (default :class:`Transforms()`;
            ``Transforms.none()`` for none).
        seed: the image of channel c depends only on (seed, c), not on its batch.
        batch_size: channels per forward/backward pass (default: 8 on a CPU, 32 on CUDA).
        robust_samples: random transformations averaged for ``robust_activations``.
        redirect_relu: back-propagate through the model's ReLUs (modules and ``F.relu``,
            ``torch.relu``, ``x.relu()``, in place or not) with lucid's
            redirected gradient: for an image whose ReLU passes no gradient (a channel off
            everywhere, as on the flat start image), the gradient that would turn units on
            goes through, so post-ReLU channels that start dead still get optimised.
        exchange_steps: after the main steps, every channel continues for this many
            steps from whichever rendered image excites it most (the images of a request
            are starting points for each other: correlated channels escape a poorer local
            optimum), keeping the better of its two images. 0 (the default) keeps every
            channel's image independent of the other channels requested.
        negative: the images that minimise each channel instead (lucent's negative
            images; not with ``exchange_steps``).
        progress: True for a progress bar on stderr, or a callable ``report(done, total,
            image)`` (:mod:`vistool.core.progress`).

    The network runs only up to ``layer``; its weights are frozen for the call and the
    model comes back with its flags, ``requires_grad`` and ``.grad`` unchanged.
    """
    count = _check_layer(loaded, layer, size)
    channels = list(range(min(count, 64))) if channels is None else [int(c) for c in channels]
    bad = [c for c in channels if not 0 <= c < count]
    if bad or not channels:
        raise VistoolError(f"channel {bad[0] if bad else 'list'} is out of range: layer "
                           f"{layer!r} has {count} channels (0-{count - 1})")
    if negative and exchange_steps:
        raise VistoolError("`negative=True` and `exchange_steps` do not combine: the exchange "
                           "picks the image that excites a channel most; drop one")
    run = _settings(loaded, size, steps, lr, param, transforms, seed, batch_size,
                    robust_samples, redirect_relu)
    sign = -1 if negative else 1
    result = _render(loaded, lambda chunk: sign * obj.channel(layer, chunk), channels, run,
                     progress, "filters")
    if exchange_steps:
        result = _exchange(loaded, layer, channels, run, result, exchange_steps, progress)
    return FeatureVisualization(*result[:1], channels, *result[1:], layer, "channel")


def _exchange(loaded: LoadedModel, layer: str, channels: list[int], run: _Run, result,
              steps: int, progress: Progress):
    """Every channel continues for ``steps`` steps (at the final learning rate, no warm-up)
    from the rendered image that excites it most; each keeps the better of its two images."""
    images, plain, robust, history = result
    with preserved_state(loaded.model, eval_mode=True), torch.no_grad():
        mean, std = normalisation(loaded.mean, loaded.std, loaded.device)
        acts = torch.cat([forward_until(loaded.model, (x.to(loaded.device) - mean) / std,
                                        [layer], gradients=False)[layer].mean((2, 3)).cpu()
                          for x in images.split(run.batch_size)])
    best = acts[:, channels].argmax(0)  # per channel, the image that excites it most
    again = replace(run, steps=steps, lr=_adapted(run)[1], final_lr=1.0, warmup=0.0,
                    adapt=False)
    new = _render(loaded, lambda chunk: obj.channel(layer, chunk), channels, again, progress,
                  "exchange", start=images[best])
    better = new[1] > plain

    def pick(old: torch.Tensor, candidate: torch.Tensor) -> torch.Tensor:
        return torch.where(better.view(-1, *[1] * (old.dim() - 1)), candidate, old)

    return (pick(images, new[0]), pick(plain, new[1]), pick(robust, new[2]),
            torch.cat([history, new[3]]))


def _checker(loaded: LoadedModel, size: int) -> Callable[[str | None, int | None], int | None]:
    """Checks an objective's layers, channels and classes on ``loaded`` and returns a
    layer's channel count (from one truncated dry run, once)."""
    counts: dict[str, int] = {}

    def check(layer: str | None, index: int | None) -> int | None:
        if layer is None:
            outputs = loaded.layers[-1].output_shape if loaded.layers else None
            loaded.class_index(index, outputs[-1] if outputs and len(outputs) == 2 else None)
            return None
        if layer not in counts:
            counts[layer] = _check_layer(loaded, layer, size)
        if index is not None and not 0 <= index < counts[layer]:
            raise TargetError(f"channel {index} is out of range: {layer!r} has "
                              f"{counts[layer]} channels (0-{counts[layer] - 1})")
        return counts[layer]

    return check


def _read_vector(path: str) -> torch.Tensor:
    """A direction's vector (C,) from a ``.npy`` file."""
    import numpy as np

    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise VistoolError(f"cannot read a vector from {path!r} ({exc}); save one with "
                           "numpy.save") from None
    if vector.ndim != 1 or not np.issubdtype(vector.dtype, np.number):
        raise VistoolError(f"{path!r} holds an array of shape {vector.shape} and type "
                           f"{vector.dtype}; a direction is one number per channel")
    return torch.from_numpy(vector.astype(np.float32))


def render(loaded: LoadedModel, objective: str | obj.Objective, *, batch: int = 1,
           interpolate: str | obj.Objective | None = None, size: int = 128, steps: int = 256,
           lr: float = 0.05, param: str = "fft", transforms: Transforms | None = None,
           seed: int = 0, robust_samples: int = 8, redirect_relu: bool = True,
           read_files: bool = True, progress: Progress = False) -> FeatureVisualization:
    """Render ``batch`` images that maximise ``objective``, together (one forward and
    backward pass per step; ``diversity`` in the objective pushes them apart).

    Args:
        loaded: the model (:func:`vistool.load_model`).
        objective: text as lucent's (``"features.12:3"``, ``"-features.12:3"`` for the
            negative image, ``"features.12:3 - 0.5*diversity(features.12)"``;
            :mod:`vistool.synthesize.objective_text`) or an
            :class:`~vistool.synthesize.objectives.Objective` (``obj.channel(...) - ...``).
        batch: how many images (each from its own start, seeded by ``seed`` and its place).
        interpolate: a second objective: the ``batch`` images (frames) go from
            ``objective`` to it, frame i maximising ``(1 - t) * objective + t * interpolate``
            (t from 0 to 1), all from the same start (lucid's channel interpolation).
        size, steps, lr, param, transforms, seed, robust_samples, redirect_relu, progress:
            as in :func:`render_filters`.
        read_files: text may read ``direction(LAYER, FILE.npy)``'s vector (False: a
            server whose visitors write the text).

    Raises:
        VistoolError: text that is not an objective (naming the bad part), an unknown layer,
            a channel or class out of range, ``batch`` below 1.
    """
    if batch < 1:
        raise VistoolError(f"`batch={batch}` must be at least 1")
    run = _settings(loaded, size, steps, lr, param, transforms, seed, batch, robust_samples,
                    redirect_relu)
    read = _read_vector if read_files else None
    objective = _checked(loaded, objective, size, read)
    if interpolate is not None:
        objective = obj.interpolation(objective, _checked(loaded, interpolate, size, read))
    starts = [0] * batch if interpolate is not None else list(range(batch))
    images, plain, robust, history = _render(loaded, lambda _chunk: objective, starts, run,
                                             progress, "render")
    return FeatureVisualization(images, list(range(batch)), plain, robust, history, None,
                                "objective", objective.name)


def _checked(loaded: LoadedModel, objective: str | obj.Objective, size: int,
             read: Callable[[str], torch.Tensor] | None) -> obj.Objective:
    """``objective`` parsed if it is text, its layers, channels and classes checked."""
    from .objective_text import parse

    if isinstance(objective, str):
        return parse(objective, _checker(loaded, size), read)
    for layer in objective.layers:
        if layer not in (obj.INPUT, OUTPUT):
            _checker(loaded, size)(layer, None)
    return objective


def _class_score(score: str) -> Callable[[list[int]], obj.Objective]:
    if score == "logit":
        return obj.class_logit
    if score == "log_prob":
        return lambda classes: obj.Objective(
            lambda acts: obj.class_logit(classes)({OUTPUT: acts[OUTPUT].log_softmax(1)}),
            [OUTPUT], f"class_log_prob({classes})")
    raise VistoolError(f"unknown class score {score!r}; use logit or log_prob")


def render_classes(loaded: LoadedModel, classes: Sequence[int | str], size: int = 128,
                   steps: int = 256, lr: float = 0.05, param: str = "fft",
                   transforms: Transforms | None = None, seed: int = 0,
                   batch_size: int | None = None, robust_samples: int = 8,
                   redirect_relu: bool = True, score: str = "logit",
                   progress: Progress = False) -> FeatureVisualization:
    """Render the image that maximises each class's score (class visualisation).

    ``classes`` are indices or names; ``score`` is ``"logit"`` (the class's logit, as
    lucid does) or ``"log_prob"`` (its log-softmax: the other classes' logits are pushed
    down too, so the image is classified as its class even where classes share features).
    The other arguments are those of :func:`render_filters`. The whole network runs
    every step.
    """
    if not classes:
        raise TargetError("no classes given; name at least one class (index or name)")
    make_objective = _class_score(score)
    outputs = loaded.layers[-1].output_shape if loaded.layers else None
    count = outputs[-1] if outputs and len(outputs) == 2 else None
    targets = [loaded.class_index(c, count) for c in classes]
    run = _settings(loaded, size, steps, lr, param, transforms, seed, batch_size,
                    robust_samples, redirect_relu)
    images, plain, robust, history = _render(
        loaded, make_objective, targets, run, progress, "classes")
    return FeatureVisualization(images, targets, plain, robust, history, None, "class")


def first_layer_weights(model: LoadedModel | nn.Module, layer: str | None = None) -> torch.Tensor:
    """The kernels of the first convolution (or ``layer``) as images (K, C, kh, kw) in [0, 1],
    each scaled symmetrically so that 0.5 is a zero weight."""
    net = model.model if isinstance(model, LoadedModel) else model
    if layer is None:
        conv = next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)
        if conv is None:
            raise LayerError(f"{type(net).__name__} has no Conv2d layer")
    else:
        (conv,) = resolve_layers(net, [layer])
        if not isinstance(conv, nn.Conv2d):
            raise LayerError(f"layer {layer!r} is a {type(conv).__name__}, not a Conv2d")
    weight = conv.weight.detach().float().cpu()
    peak = weight.flatten(1).abs().amax(1).clamp(min=1e-12)[:, None, None, None]
    return weight / (2 * peak) + 0.5
