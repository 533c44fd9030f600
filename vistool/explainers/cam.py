"""Class activation maps for one or several layers: :func:`explain` runs any method of
:mod:`vistool.explainers.cams` (one module per method, each with its specification, plus
the methods installed under the ``vistool.cams`` entry-point group).

Every method reduces to a layer-resolution map computed from the layer's activations
``A`` (N, K, h, w) and, for the gradient methods, ``G = d score / d A``:

* ``G`` comes from ``torch.autograd.grad`` to the captured layer output (``vistool.hooks``):
  no backward below the layer and no parameter ``.grad`` touched.
* When the layer is followed only by global average pooling and a linear classifier
  (checked once per model and layer by a probe, see :func:`linear_head`), ``G`` is known
  in closed form, ``W[target] / (h * w)``, and no backward pass runs at all.
* ``topk=k`` explains k classes from one forward pass.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..core.errors import ConstantMapWarning, TargetError, VistoolError, suggestion
from ..core.hooks import record, replaced_output
from ..core.imageio import deprocess
from ..core.layers import default_layer as find_default_layer
from ..core.layout import GridView, ReshapeView, grid_view
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..drawing import apply_colormap, image_grid, normalize, overlay, png_bytes
from .cams import CamContext, CamMethod, methods
from .inference import inference_copy
from .names import CAM_METHODS, FUSIONS
from .targets import main_output

__all__ = [
    "AUGMENTATIONS",
    "CAM_METHODS",
    "FUSIONS",
    "CamResult",
    "ConstantMapWarning",
    "explain",
    "fast_copy",
    "linear_head",
]


Targets = int | Sequence[int] | torch.Tensor | Callable[[torch.Tensor], torch.Tensor] | None


@dataclass
class CamResult:
    """The result of :func:`explain`.

    Attributes:
        maps: (N, H, W) at input resolution in [0, 1]; (N, k, H, W) with ``topk=k``.
        raw: per layer, the unnormalised layer-resolution map (N, h, w) or (N, k, h, w),
            after the method's ReLU.
        targets: explained class indices (N,) or (N, k); None for a callable target.
        scores: the explained outputs (logits or the callable's values), shaped like targets.
        probs: softmax probabilities of the targets (None for a callable target).
        logits: the model output (N, classes) (a segmentation model's: its per-pixel scores
            (N, classes, H, W)).
        layers: the explained layers; method: the method; closed_form: whether the
            gradients came from the closed form of a GAP + linear head.
        inputs: the explained images as pictures (N, 3, H, W) in [0, 1] (the model's
            normalisation undone; None when ``explain`` was given a bare ``nn.Module``).

    In a notebook the result shows itself: each image with its map overlaid (one row per
    image, one column per target with ``topk``; the maps alone without ``inputs``).
    """

    maps: torch.Tensor
    raw: dict[str, torch.Tensor]
    targets: torch.Tensor | None
    scores: torch.Tensor
    probs: torch.Tensor | None
    logits: torch.Tensor
    layers: list[str]
    method: str
    closed_form: bool
    inputs: torch.Tensor | None = field(default=None, repr=False)

    def _repr_png_(self) -> bytes:
        maps = self.maps.detach().float().cpu()
        maps = maps[:, None] if maps.dim() == 3 else maps  # (N, k, H, W)
        if self.inputs is None:
            tiles = apply_colormap(maps, "jet")
        else:
            pictures = self.inputs.detach().float().cpu()
            tiles = torch.stack([torch.stack([overlay(pictures[i], m) for m in row])
                                 for i, row in enumerate(maps)])
        return png_bytes(image_grid(tiles.flatten(0, 1), cols=maps.shape[1]))


# ---------------------------------------------------------------------------------------------
# The closed form of a global-average-pool + linear head

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(model: nn.Module, key: tuple, compute: Callable[[], object]):
    """Per-model memo (dropped with the model) for dry-run results: heads, default layers."""
    memo = _CACHE.setdefault(model, {})
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def linear_head(model: nn.Module, layer: str, sample: torch.Tensor) -> nn.Linear | None:
    """The linear classifier ``L`` if ``model(x) == L(mean_hw(layer(x)))`` as a function of the
    layer output, else None. ``sample`` is one input batch (only its shape, dtype and
    device matter).

    Found with two forward passes, cached per model, layer and input shape: one finds the
    ``nn.Linear`` whose output is the model's output; one replaces the layer's output by
    random values (negative ones included, so a ReLU or any non-linearity in between is
    caught) and checks that the model's output is that linear map of their spatial mean.
    """
    return _cached(model, _head_key(layer, sample),
                   lambda: _probe_linear_head(model, layer, sample[:1]))


def _head_key(layer: str, sample: torch.Tensor) -> tuple:
    return ("head", layer, tuple(sample.shape[1:]), sample.dtype, str(sample.device))


def _probe_linear_head(model: nn.Module, layer: str, sample: torch.Tensor) -> nn.Linear | None:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        return None
    x = torch.zeros((2, *sample.shape[1:]), dtype=sample.dtype, device=sample.device)
    with torch.no_grad(), preserved_state(model, eval_mode=True):
        with record(model, [layer, *names]) as rec:
            out = model(x)
        if not isinstance(out, torch.Tensor) or layer not in rec:
            return None
        act = rec[layer]
        if not isinstance(act, torch.Tensor) or act.dim() != 4:
            return None
        modules = dict(model.named_modules())
        head = next((modules[n] for n in names if n in rec and rec[n].shape == out.shape
                     and torch.equal(rec[n], out)), None)
        if head is None or head.in_features != act.shape[1] or not head.weight.any():
            return None  # a zero head (torchvision's untrained ViT) makes every output equal
        generator = torch.Generator(device=act.device).manual_seed(0)
        probe = torch.randn(act.shape, generator=generator, device=act.device, dtype=act.dtype)
        with replaced_output(model, layer, lambda _out: probe.clone()):  # in-place ops after
            probed = model(x)
        expected = head(probe.mean((2, 3)))
        if probed.shape != expected.shape or not torch.allclose(probed, expected, rtol=1e-4,
                                                                 atol=1e-5):
            return None
    return head


# ---------------------------------------------------------------------------------------------
# Targets


def _resolve_targets(targets: Targets, logits: torch.Tensor, topk: int | None) -> torch.Tensor:
    """Class indices (N, k) to explain."""
    if isinstance(targets, _Chosen):
        return targets.index
    n, classes = logits.shape
    if topk is not None:
        if targets is not None:
            raise TargetError("give either targets or topk, not both")
        if not 1 <= topk <= classes:
            raise TargetError(f"topk must be between 1 and {classes}, not {topk}")
        return logits.topk(topk, dim=1).indices
    if targets is None:
        return logits.argmax(1, keepdim=True)
    index = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    if index.is_inference():  # made under torch.inference_mode(): autograd cannot save it
        index = index.clone()
    if index.numel() == 1:
        index = index.expand(n)
    if index.numel() != n:
        raise TargetError(f"got {index.numel()} targets for {n} images; give one per image")
    bad = index[(index < 0) | (index >= classes)]
    if bad.numel():
        raise TargetError(f"class index {int(bad[0])} is out of range; the model has {classes} "
                          f"classes (0..{classes - 1})")
    return index[:, None]


# ---------------------------------------------------------------------------------------------
# explain(): check the request, probe the head, one forward pass, the method's maps, the result


def _layer_names(model: LoadedModel | nn.Module, net: nn.Module, images: torch.Tensor,
                 layer: str | Sequence[str] | None) -> list[str]:
    if layer is None:
        shape = tuple(images.shape[1:])
        layer = (model.default_layer if isinstance(model, LoadedModel) else _cached(
            net, ("default_layer", shape), lambda: find_default_layer(net, shape)))
    return [layer] if isinstance(layer, str) else list(layer)


def _method(method: str) -> CamMethod:
    found = methods()
    if method not in found:
        raise VistoolError(f"unknown CAM method {method!r}" + suggestion(method, found,
                                                                            "methods"))
    return found[method]


def _options(spec: CamMethod, options: Mapping[str, object] | None) -> dict[str, object]:
    """The method's options: its defaults, updated by ``options`` (each converted to the
    default's type)."""
    given = dict(options or {})
    unknown = [name for name in given if name not in spec.params]
    if unknown:
        known = ", ".join(spec.params) or "none"
        raise VistoolError(f"{spec.name} has no option {unknown[0]!r} in `options` (its "
                           f"options: {known})")
    values = {}
    for name, param in spec.params.items():
        value = given.get(name, param.default)
        try:
            value = type(param.default)(value)
        except (TypeError, ValueError):
            raise VistoolError(f"{spec.name}'s option {name} must be a "
                               f"{type(param.default).__name__}, not {value!r}") from None
        if param.choices and value not in param.choices:
            raise VistoolError(f"{spec.name}'s option {name} must be one of "
                               f"{', '.join(param.choices)}, not {value!r}")
        values[name] = value
    return values


def _check_request(spec: CamMethod, images: torch.Tensor, targets: Targets,
                   topk: int | None, eigen_smooth: bool, fuse: str | None,
                   layers: list[str]) -> None:
    if images.dim() != 4:
        raise VistoolError(f"expected a batch (N, C, H, W), got shape {tuple(images.shape)}")
    if callable(targets) and topk is not None:
        raise TargetError("topk needs class indices, not a callable target")
    if callable(targets) and spec.class_target:
        raise TargetError(f"{spec.name} needs class indices, not a callable target (such as "
                          "a segmentation target); use a method that explains any score, "
                          "e.g. gradcam")
    if eigen_smooth and not spec.eigen_smooth:
        raise VistoolError(f"`eigen_smooth` does not apply to {spec.name}: its map is not a "
                           "sum over channels; leave it off")
    if fuse is not None and len(layers) < 2:
        raise VistoolError(f"`fuse={fuse!r}` combines several layers; give two or more in "
                           "`layer=` or leave fuse unset")
    if fuse is not None and fuse not in FUSIONS:
        raise VistoolError(f"`fuse={fuse!r}` is not a fusion; use one of {', '.join(FUSIONS)}")


def _heads(net: nn.Module, images: torch.Tensor, layers: list[str], spec: CamMethod,
           closed_form: bool | None, targets: Targets) -> tuple[dict[str, nn.Linear | None], bool]:
    """The probed GAP + linear head per layer (empty when not probed; Ablation-CAM uses each
    one found) and whether the closed form applies to every layer."""
    if not (spec.head == "require" or (closed_form is not False and not callable(targets)
                                       and spec.head == "use")):
        return {}, False
    heads = {name: linear_head(net, name, images) for name in layers}
    missing = [name for name, head in heads.items() if head is None]
    if missing and (spec.head == "require" or closed_form):
        remedy = "use gradcam" if spec.head == "require" else "leave `closed_form` unset"
        raise VistoolError(
            f"layer {missing[0]!r} is not followed by global average pooling and a "
            f"linear classifier alone, so {spec.name}'s closed form does not apply; {remedy}")
    return heads, not missing


def _scores(output: torch.Tensor, targets: Targets, topk: int | None, n: int,
            score: Callable | None, options: Mapping[str, object]
            ) -> tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]:
    """The explained class indices (N, k) (None for a callable target), their scores (N, k)
    and the logits (the detached output)."""
    if callable(targets):
        scores = targets(output)
        if scores.shape != (n,):
            raise TargetError(f"the target callable returned shape {tuple(scores.shape)}; "
                              f"it must return one score per image ({n},)")
        return None, scores[:, None], main_output(output).detach()
    output = main_output(output)
    if output.dim() != 2:
        remedy = ("a SegmentationTarget (vistool.SegmentationTarget.predicted(output, class))"
                  if output.dim() == 4 else "a callable target that returns one score per "
                  "image")
        raise TargetError(f"the model output has shape {tuple(output.shape)}, not (N, "
                          f"classes); give {remedy}")
    logits = output.detach()
    index = _resolve_targets(targets, logits, topk)
    return index, (output.gather(1, index) if score is None else
                   score(output, index, options)), logits


def _forward(net: nn.Module, images: torch.Tensor, layers: list[str], targets: Targets,
             topk: int | None, spec: CamMethod, gradients: bool, options: Mapping[str, object],
             layout: str, reshape) -> tuple[
                 dict[str, torch.Tensor], dict[str, GridView | ReshapeView],
                 torch.Tensor | None, torch.Tensor, torch.Tensor, object]:
    """One forward pass: the layers' outputs (in the autograd graph with ``gradients``) and
    how each maps to (N, K, h, w), the class indices, the scores, the logits and what the
    method's own hooks captured."""
    hooks = spec.hooks(net, layers) if spec.hooks else contextlib.nullcontext()
    capture = getattr(targets, "capture", None)  # (a SimilarityTarget's embedding)
    with torch.set_grad_enabled(gradients), record(net, layers, gradients=gradients) as rec, \
            hooks as captured, capture(net) if capture else contextlib.nullcontext():
        output = net(images)
        index, scores, logits = _scores(output, targets, topk, images.shape[0], spec.score,
                                        options)
    missing = [name for name in layers if name not in rec]
    if missing:
        raise VistoolError(f"layer {missing[0]!r} did not run in the forward pass; "
                           "pick a layer that 'vistool layers' lists with a shape")
    acts = {name: rec[name] for name in layers}
    views = {name: grid_view(name, act, images.shape[2:], layout, reshape)
             for name, act in acts.items()}
    return acts, views, index, scores, logits, captured


def _upsample(raw: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    n, k, h, w = raw.shape
    return F.interpolate(raw.reshape(n * k, 1, h, w).float(), size=tuple(size), mode="bilinear",
                         align_corners=False).reshape(n, k, *size)


def _fused(raw: dict[str, torch.Tensor], size: Sequence[int], fuse: str) -> torch.Tensor:
    """The map at input resolution, normalised, as pytorch-grad-cam makes it: one layer's
    map normalised, upsampled and normalised again; several layers' maps fused by their
    mean (each normalised, then upsampled), by their product (RefineCAM's: of each layer's
    map as one layer makes it) or by their sum (LeGrad's: the raw maps), normalised."""
    if fuse == "sum":
        return normalize(torch.stack([_upsample(r, size) for r in raw.values()]).sum(0))
    if len(raw) == 1 or fuse == "product":
        maps = torch.stack([normalize(_upsample(r, size)) for r in raw.values()])
        return maps[0] if len(raw) == 1 else normalize(maps.prod(0))
    return normalize(torch.stack([_upsample(normalize(r), size) for r in raw.values()]).mean(0))


def _result(ctx: CamContext, raw: dict[str, torch.Tensor], topk: int | None, fuse: str,
            model: LoadedModel | nn.Module) -> CamResult:
    """Fuse the per-layer maps at input resolution, warn about constant ones (for the caller
    of :func:`explain`), drop the k axis without ``topk`` and keep the inputs as pictures
    (when ``model`` says how they were normalised)."""
    maps = _fused(raw, ctx.images.shape[2:], fuse)
    constant = sum(int((r.flatten(2).amax(-1) == r.flatten(2).amin(-1)).sum())
                   for r in raw.values())
    if constant:
        warnings.warn(f"{ctx.method.name}: {constant} map(s) are constant (e.g. zero "
                      "gradients) and are returned as zeros", ConstantMapWarning, stacklevel=4)
    index = ctx.index
    probs = None if index is None else ctx.logits.softmax(1).gather(1, index)

    def first(t: torch.Tensor | None) -> torch.Tensor | None:
        return t[:, 0] if topk is None and t is not None else t

    return CamResult(maps=first(maps), raw={n: first(r) for n, r in raw.items()},
                     targets=first(index), scores=first(ctx.scores.detach()), probs=first(probs),
                     logits=ctx.logits, layers=ctx.layers, method=ctx.method.name,
                     closed_form=ctx.closed_form, inputs=deprocess(
                         ctx.images, model.mean, model.std) if isinstance(
                         model, LoadedModel) else None)


#: aug_smooth's test-time augmentations, pytorch-grad-cam's: no flip and a horizontal flip,
#: each at 0.9, 1 and 1.1 times the (normalised) input.
AUGMENTATIONS = tuple((flip, factor) for flip in (False, True) for factor in (0.9, 1.0, 1.1))


@dataclass(frozen=True)
class _Chosen:
    """Class indices (N, k) chosen already: the augmented inputs of ``aug_smooth`` explain
    the classes chosen on the input as given."""

    index: torch.Tensor


def _aug_smoothed(request: _Request, images: torch.Tensor, targets: Targets) -> CamResult:
    """The mean of the maps of the augmented inputs, each flipped back; the scores and
    probabilities are those of the input as given."""
    plain = _explain(request, images, targets)
    if not callable(targets):
        targets = _Chosen(plain.targets if request.topk else plain.targets[:, None])
    results = []
    for flip, factor in AUGMENTATIONS:
        if not flip and factor == 1.0:
            results.append(plain)
            continue
        x = images * factor
        result = _explain(request, x.flip(-1) if flip else x, targets)
        if flip:
            result.maps = result.maps.flip(-1)
            result.raw = {n: r.flip(-1) for n, r in result.raw.items()}
        results.append(result)
    plain.maps = torch.stack([r.maps for r in results]).mean(0)
    plain.raw = {n: torch.stack([r.raw[n] for r in results]).mean(0) for n in plain.raw}
    return plain


def explain(
    model: LoadedModel | nn.Module,
    images: torch.Tensor,
    method: str = "gradcam",
    targets: Targets = None,
    layer: str | Sequence[str] | None = None,
    topk: int | None = None,
    closed_form: bool | None = None,
    batch_size: int | None = None,
    channels: int | None = None,
    progress: bool = False,
    layout: str = "auto",
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None,
    fuse: str | None = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    options: Mapping[str, object] | None = None,
) -> CamResult:
    """Explain the predictions of a classifier for a batch of images with a class activation map.

    Args:
        model: a :class:`~vistool.zoo.LoadedModel` or an ``nn.Module``.
        images: preprocessed batch (N, C, H, W) on the model's device.
        method: one of ``CAM_METHODS`` (``vistool methods`` says what each needs).
        targets: None (the predicted class), a class index for all images, one per image,
            or a callable: model output -> one score per image (segmentation, similarity:
            :mod:`vistool.explainers.targets`).
        layer: a layer name, or several to fuse; default: the model's default target layer.
        topk: explain the k highest-scoring classes of each image (maps (N, k, H, W)).
        closed_form: use the closed form of a GAP + linear head: None detects it, False
            always back-propagates, True requires it (``cam`` always does).
        batch_size: masked forwards (Score-CAM family, ``ablationcam``; ``sess``: windows) per
            batch; None: sized to the memory (``sess``: 32).
        channels: the Score-CAM family: only the k highest-variance channels of each image.
        progress: show a progress bar for the many-forward methods.
        layout: ``"auto"``, ``"nchw"``, ``"nhwc"`` (Swin) or ``"tokens"`` (ViT) (:func:`~vistool.
            core.layout.grid_view`); ``reshape``: output -> (N, C, H, W) for any other.
        fuse: how several layers' maps combine: ``"mean"`` or ``"product"`` (RefineCAM's) of
            the normalised maps, ``"sum"`` of the raw ones; None: the method's own.
        aug_smooth: the mean map of the six :data:`AUGMENTATIONS`, each flipped back.
        eigen_smooth: the first principal component of the weighted activations instead of
            their channel sum, for the methods whose map is such a sum.
        options: the method's own options (``vistool methods`` lists them): ``{"k": 3}``.

    Runs in eval mode; the flags, ``requires_grad`` and ``.grad`` come back; no hook remains.

    Raises:
        TargetError: a target index is out of range, or targets do not match the batch.
        VistoolError: an unknown method or option, a method's need unmet (``cam``: a GAP +
            linear head), ``fuse`` with one layer, ``eigen_smooth`` where it does not apply.
    """
    spec, net = _method(method), model.model if isinstance(model, LoadedModel) else model
    layers = _layer_names(model, net, images, layer)
    _check_request(spec, images, targets, topk, eigen_smooth, fuse, layers)
    request = _Request(model, net, spec, layers, topk, closed_form, batch_size, channels,
                       progress, layout, reshape, fuse or spec.fuse, eigen_smooth,
                       _options(spec, options))
    if aug_smooth:
        return _aug_smoothed(request, images, targets)
    return _explain(request, images, targets)


@dataclass(frozen=True)
class _Request:
    """One checked :func:`explain` request, for one or several (augmented) batches."""

    model: LoadedModel | nn.Module
    net: nn.Module
    spec: CamMethod
    layers: list[str]
    topk: int | None
    closed_form: bool | None
    batch_size: int | None
    channels: int | None
    progress: bool
    layout: str
    reshape: Callable[[torch.Tensor], torch.Tensor] | None
    fuse: str
    eigen_smooth: bool
    options: dict[str, object]


def _explain(request: _Request, images: torch.Tensor, targets: Targets) -> CamResult:
    """One explanation: heads, one forward pass, the method's maps, the result."""
    spec, net, layers = request.spec, request.net, request.layers
    with preserved_state(net, eval_mode=True, frozen=True):
        heads, closed = _heads(net, images, layers, spec, request.closed_form, targets)
        acts, views, index, scores, logits, captured = _forward(
            net, images, layers, targets, request.topk, spec, spec.gradients and not closed,
            request.options, request.layout, request.reshape)
        ctx = CamContext(net=net, images=images, method=spec, layers=layers, acts=acts,
                         views=views, index=index, scores=scores, logits=logits, heads=heads,
                         closed_form=closed, batch_size=request.batch_size,
                         channels=request.channels, progress=request.progress,
                         eigen_smooth=request.eigen_smooth, layout=request.layout,
                         reshape=request.reshape, options=request.options, explain=explain,
                         captured=captured)
        raw = spec.maps(ctx)
    return _result(ctx, raw, request.topk, request.fuse, request.model)


def fast_copy(model: LoadedModel | nn.Module, method: str, layers: Sequence[str],
              sample: torch.Tensor) -> nn.Module:
    """A private copy of ``model`` that :func:`explain` explains like the model (equal up to
    float rounding) but faster, for runs over many batches like ``sample``: batch norm
    folded, channels-last and, where no backward pass runs (the methods without gradients
    and the gradient methods on a layer with the closed form), oneDNN-fused convolutions
    (:func:`~vistool.explainers.inference.inference_copy`, keeping ``layers``). Building it
    costs a few forward passes of one image. The methods that make such copies themselves
    (Score-CAM, Ablation-CAM) get the model itself.
    """
    spec = _method(method)
    net = model.model if isinstance(model, LoadedModel) else model
    if spec.own_copy:
        return net
    with preserved_state(net, eval_mode=True, frozen=True), torch.no_grad():
        heads = {name: linear_head(net, name, sample) for name in layers} if (
            spec.head != "never") else {}
        forward_only = not spec.gradients or (bool(heads) and None not in heads.values())
        fast = inference_copy(net, fuse=True, sample=sample[:1] if forward_only else None,
                              keep=list(layers))
    names = {module: name for name, module in net.named_modules()}
    for layer, head in heads.items():  # the copy has the same head: no probe of its own
        with contextlib.suppress(AttributeError):
            copied = None if head is None else fast.get_submodule(names[head])
            _cached(fast, _head_key(layer, sample), lambda h=copied: h)
    return fast
