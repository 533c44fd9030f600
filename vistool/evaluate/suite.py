"""Evaluate explanation methods on a labelled batch: every metric of every method, one value
per image, summarised as mean, standard deviation and a 95% bootstrap interval."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ..core.errors import VistoolError, suggestion
from ..core.state import preserved_state
from ..core.zoo import LoadedModel
from ..explainers.attribution import attribute
from ..explainers.cam import ConstantMapWarning, explain
from ..explainers.names import ATTRIBUTION_METHODS, CAM_METHODS
from . import faithfulness as faith
from . import localisation as loc
from .names import EVAL_METHODS, HIGHER_IS_BETTER, LOCALISATION, METRIC_SPECS, METRICS, Measuring
from .sanity import SanityResult, randomisation_check

__all__ = ["EVAL_METHODS", "Evaluation", "bootstrap", "evaluate", "explanation_maps", "predicted"]


def explanation_maps(model: LoadedModel | nn.Module, images: torch.Tensor, method: str,
                     targets: torch.Tensor, layer: str | None = None, seed: int = 0
                     ) -> torch.Tensor:
    """Maps (N, H, W) in [0, 1] of any CAM or attribution method, or ``random`` (uniform
    noise from ``seed``: the chance level every metric should beat)."""
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return torch.rand((images.shape[0], *images.shape[2:]), generator=generator
                          ).to(images.device)
    if method in CAM_METHODS:
        return explain(model, images, method, targets=targets, layer=layer).maps
    if method in ATTRIBUTION_METHODS:
        return attribute(model, images, method, targets=targets, layer=layer, seed=seed).maps
    raise VistoolError(f"unknown method {method!r}" + suggestion(method, EVAL_METHODS,
                                                                   "methods"))


def bootstrap(values: torch.Tensor, resamples: int = 1000, seed: int = 0) -> dict:
    """Mean, standard deviation, 95% percentile-bootstrap interval and count of the finite
    values (NaNs, e.g. from empty masks, are left out; all None when none is finite)."""
    finite = values[torch.isfinite(values)].cpu().double()
    if finite.numel() == 0:
        return {"mean": None, "std": None, "ci95": [None, None], "n": 0}
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(finite.numel(), (resamples, finite.numel()), generator=generator)
    means = finite[picks].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([0.025, 0.975], dtype=torch.float64))
    std = float(finite.std()) if finite.numel() > 1 else 0.0
    return {"mean": float(finite.mean()), "std": std, "ci95": [float(lo), float(hi)],
            "n": int(finite.numel())}


@dataclass
class Evaluation:
    """What :func:`evaluate` measured.

    Attributes:
        values: method -> metric -> (N,) one value per image (NaN where undefined).
        curves: method -> ``deletion`` / ``insertion`` / ``road-morf`` / ``road-lerf`` ->
            :class:`~vistool.evaluate.faithfulness.Curve`.
        sanity: method -> :class:`~vistool.evaluate.sanity.SanityResult` (if asked for).
        maps: method -> (N, H, W) the evaluated maps.
    """

    values: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    curves: dict[str, dict[str, faith.Curve]] = field(default_factory=dict)
    sanity: dict[str, SanityResult] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def summary(self, resamples: int = 1000, seed: int = 0) -> dict:
        """``{"methods": {method: {metric: {"mean", "std", "ci95", "n",
        "higher_is_better"}}}}``, plus each sanity check's mean similarity per step."""
        out: dict = {"methods": {}}
        for method, metrics in self.values.items():
            out["methods"][method] = {
                name: {**bootstrap(values, resamples, seed),
                       "higher_is_better": HIGHER_IS_BETTER[name]}
                for name, values in metrics.items()}
        if self.sanity:
            out["sanity"] = {method: {"layers": result.layers,
                                      "spearman": result.spearman.nanmean(1).tolist(),
                                      "ssim": result.ssim.nanmean(1).tolist()}
                             for method, result in self.sanity.items()}
        return out


def _regions(masks, boxes, size) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(object masks, box masks); either fills in for the other (a mask's bounding box)."""
    if boxes is not None:
        boxes = loc.box_masks(torch.as_tensor(boxes), size)
    if masks is not None:
        masks = torch.as_tensor(masks).bool()
        if boxes is None:
            rows, cols = masks.any(2), masks.any(1)
            boxes = (_span(rows)[:, :, None] & _span(cols)[:, None, :])
    return (masks if masks is not None else boxes), boxes


def _span(hits: torch.Tensor) -> torch.Tensor:
    """(N, L) bool -> (N, L) True from the first to the last True of each row."""
    ahead, behind = hits.long().cummax(1).values, hits.flip(1).long().cummax(1).values.flip(1)
    return (ahead & behind).bool()


def _measure(ev: Evaluation, method, score, images, maps, targets, metrics, masks, boxes,
             options) -> None:
    """Every metric of one method's maps, as :data:`~vistool.evaluate.names.METRIC_SPECS`
    says; ``score`` (a :class:`faith.Scorer`) runs the model for all faithfulness metrics."""
    values = ev.values.setdefault(method, {})
    m = Measuring(maps, images, targets, None if masks is None else masks.to(maps.device),
                  None if boxes is None else boxes.to(maps.device), score,
                  curves=ev.curves.setdefault(method, {}), **options)
    for name in metrics:
        values[name] = METRIC_SPECS[name].measure(m)
    ev.values[method] = {name: values[name] for name in metrics}


def predicted(model: LoadedModel | nn.Module, images: torch.Tensor, batch_size: int = 64
              ) -> torch.Tensor:
    """The predicted class of each image (N,) (eval mode; the model's flags come back)."""
    net = model.model if isinstance(model, LoadedModel) else model
    with preserved_state(net, eval_mode=True), torch.inference_mode():
        return torch.cat([net(images[i:i + batch_size]).argmax(1)
                          for i in range(0, len(images), batch_size)])


def evaluate(model: LoadedModel | nn.Module, images: torch.Tensor, targets: torch.Tensor | None,
             methods: Sequence[str] = ("gradcam", "random"),
             metrics: Sequence[str] = METRICS, masks: torch.Tensor | None = None,
             boxes: torch.Tensor | None = None, layer: str | None = None, steps: int = 24,
             baseline: str | float | None = None, tolerance: int | None = None,
             sanity: bool = False, batch_size: int = 64, seed: int = 0,
             progress: bool = False) -> Evaluation:
    """Explain ``images`` with each method and score every map with every metric.

    Args:
        model: the classifier (:class:`~vistool.zoo.LoadedModel` or ``nn.Module``).
        images: the preprocessed batch (N, C, H, W) on the model's device.
        targets: (N,) the class to explain per image (the label); None: the prediction.
        methods: names from ``EVAL_METHODS`` (CAM methods, attribution methods, ``random``).
        metrics: names from :data:`vistool.evaluate.names.METRICS`; the localisation ones
            need ``masks`` or ``boxes``.
        masks: (N, H, W) bool object masks; boxes: (N, 4) ``(x0, y0, x1, y1)``. Either
            stands in for the other (a box as a mask, a mask's bounding box). The pointing
            game and the energy pointing game use the boxes, relevance mass and IoU the masks.
        layer: the CAM layer (default: the model's default layer).
        steps, baseline: of the deletion and insertion curves
            (:func:`~vistool.evaluate.faithfulness.perturbation_curve`).
        tolerance: of the pointing game, in pixels (default: 15 at 224, scaled:
            :func:`~vistool.evaluate.localisation.default_tolerance`).
        sanity: also run :func:`~vistool.evaluate.sanity.randomisation_check` per method.
        batch_size: perturbed images per forward pass.
        seed: seeds the random maps, SmoothGrad noise, ROAD's noise and the sanity check.
        progress: progress bars.
    """
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise VistoolError(f"unknown metric {unknown[0]!r}" + suggestion(unknown[0], METRICS,
                                                                         "metrics"))
    masks, boxes = _regions(masks, boxes, images.shape[2:])
    if masks is None and any(m in LOCALISATION for m in metrics):
        raise VistoolError("localisation metrics (" + ", ".join(LOCALISATION) + ") need "
                           "object masks or boxes; give them or leave these metrics out")
    if targets is None:
        targets = predicted(model, images, batch_size)
    targets = torch.as_tensor(targets, device=images.device).long().expand(images.shape[0])
    if layer is None and isinstance(model, LoadedModel):
        layer = model.default_layer  # also for the sanity check's copies, plain modules
    if tolerance is None:
        tolerance = loc.default_tolerance(tuple(images.shape[2:]))
    options = {"steps": steps, "baseline": baseline, "tolerance": tolerance, "seed": seed,
               "progress": progress}
    ev = Evaluation()
    needs_model = any(METRIC_SPECS[name].needs == "model" for name in metrics)
    score = faith.Scorer(model, images, batch_size) if needs_model else None  # one copy
    for method in methods:
        maps = explanation_maps(model, images, method, targets, layer, seed)
        ev.maps[method] = maps
        _measure(ev, method, score, images, maps, targets, metrics, masks, boxes, options)
        if sanity and method != "random":
            ev.sanity[method] = randomisation_check(
                model, images, targets, _explainer(method, layer, seed), seed=seed,
                progress=progress)
    return ev


def _explainer(method: str, layer: str | None, seed: int):
    def run(net, images, targets):
        with warnings.catch_warnings():  # a randomised model may well give blank maps
            warnings.simplefilter("ignore", ConstantMapWarning)
            return explanation_maps(net, images, method, targets, layer, seed)
    return run
