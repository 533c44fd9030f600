"""The evaluation metrics: one table, :data:`METRIC_SPECS`, of every metric by name with the
direction in which it is better, what it needs and how it is measured. Importable without
torch (the CLI's choices; a test checks they equal the library's): a metric's functions
are imported only when it is measured.

Adding a metric is one entry in :data:`METRIC_SPECS`; :func:`vistool.evaluate.evaluate`,
its summary, the report, the CLI's ``--metrics`` and the dashboard read it from there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import evaluate as api  # the package: names imported on first use (PEP 562)
from ..explainers.names import ATTRIBUTION_METHODS, CAM_METHODS

if TYPE_CHECKING:
    import torch

    from .faithfulness import Curve, Scorer

__all__ = [
    "EVAL_METHODS",
    "HIGHER_IS_BETTER",
    "LOCALISATION",
    "METRICS",
    "METRIC_SPECS",
    "Measuring",
    "MetricSpec",
]

EVAL_METHODS = (*CAM_METHODS, *ATTRIBUTION_METHODS, "random")  # random: the chance level


@dataclass
class Measuring:
    """What a metric's ``measure`` reads: one method's maps and what they are measured
    against (:func:`vistool.evaluate.evaluate` makes one per method).

    Attributes:
        maps: (N, H, W) the method's maps.
        images: (N, C, H, W) the preprocessed batch; targets: (N,) the explained classes.
        masks, boxes: (N, H, W) bool object masks and box masks on the maps' device (None
            without them; a metric that needs them has ``needs="masks"``).
        score: the :class:`~vistool.evaluate.faithfulness.Scorer` that runs the model
            (None when no metric asked for has ``needs="model"``).
        tolerance, steps, baseline, seed, progress: :func:`~vistool.evaluate.evaluate`'s
            options of that name.
        curves: the method's curves by name (:meth:`curve` adds to them).
    """

    maps: torch.Tensor
    images: torch.Tensor
    targets: torch.Tensor
    masks: torch.Tensor | None
    boxes: torch.Tensor | None
    score: Scorer | None
    tolerance: int
    steps: int
    baseline: str | float | None
    seed: int
    progress: bool
    curves: dict[str, Curve]
    _shared: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def curve(self, name: str, curve: Curve) -> torch.Tensor:
        """Keep ``curve`` as the method's curve ``name``; returns its AUC (N,)."""
        self.curves[name] = curve
        return curve.auc

    def once(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()``, run once per method for all the metrics that share it (``key``)."""
        if key not in self._shared:
            self._shared[key] = compute()
        return self._shared[key]


@dataclass(frozen=True)
class MetricSpec:
    """One metric of :func:`vistool.evaluate.evaluate`.

    Attributes:
        higher_is_better: the direction in which the metric is better.
        needs: what it reads besides the maps: ``"masks"`` (object masks or boxes; a
            localisation metric), ``"model"`` (forward passes) or ``"maps"`` (nothing else).
        measure: ``measure(m)`` -> (N,) one value per image (NaN where undefined), from a
            :class:`Measuring` ``m``.
    """

    higher_is_better: bool
    needs: str
    measure: Callable[[Measuring], torch.Tensor]


def _perturbation(mode: str) -> Callable[[Measuring], torch.Tensor]:
    return lambda m: m.curve(mode, api.perturbation_curve(
        m.score, m.images, m.maps, m.targets, mode, m.steps, m.baseline, progress=m.progress))


def _road(order: str) -> Callable[[Measuring], torch.Tensor]:
    return lambda m: m.curve(f"road-{order}", api.road_curve(
        m.score, m.images, m.maps, m.targets, order, seed=m.seed, progress=m.progress))


def _confidence_change(m: Measuring) -> tuple[torch.Tensor, torch.Tensor]:
    """(average drop, increase in confidence), computed once for both metrics."""
    return m.once("confidence_change",
                  lambda: api.confidence_change(m.score, m.images, m.maps, m.targets))


# name -> how it is measured; in this order in the CLI's help, the default and the reports.
# The pointing game and its energy version use the boxes, relevance mass and IoU the masks.
METRIC_SPECS: dict[str, MetricSpec] = {
    "pointing_game": MetricSpec(
        True, "masks", lambda m: api.pointing_game(m.maps, m.boxes, m.tolerance)),
    "energy_pointing_game": MetricSpec(
        True, "masks", lambda m: api.relevance_mass(m.maps, m.boxes)),
    "relevance_mass": MetricSpec(True, "masks", lambda m: api.relevance_mass(m.maps, m.masks)),
    "iou": MetricSpec(True, "masks", lambda m: api.iou(m.maps, m.masks)),
    "sparseness": MetricSpec(True, "maps", lambda m: api.sparseness(m.maps)),
    "deletion_auc": MetricSpec(False, "model", _perturbation("deletion")),
    "insertion_auc": MetricSpec(True, "model", _perturbation("insertion")),
    "average_drop": MetricSpec(False, "model", lambda m: _confidence_change(m)[0]),
    "increase_in_confidence": MetricSpec(True, "model", lambda m: _confidence_change(m)[1]),
    "road_morf_auc": MetricSpec(False, "model", _road("morf")),
    "road_lerf_auc": MetricSpec(True, "model", _road("lerf")),
}

# name -> True when a higher value is better
HIGHER_IS_BETTER = {name: spec.higher_is_better for name, spec in METRIC_SPECS.items()}
METRICS = tuple(METRIC_SPECS)
LOCALISATION = tuple(name for name, spec in METRIC_SPECS.items() if spec.needs == "masks")
