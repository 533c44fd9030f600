"""Explanation quality: faithfulness, localisation and complexity metrics, sanity checks.

Batched, on the images' device, tensors in and out; :func:`evaluate` runs the whole suite
over several methods, :mod:`vistool.evaluate.names` lists the metrics. Names are imported
on first use (PEP 562), so the CLI can read the names without importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..core.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "BASELINES": "faithfulness",
    "Curve": "faithfulness",
    "confidence_change": "faithfulness",
    "impute": "faithfulness",
    "perturbation_curve": "faithfulness",
    "road_curve": "faithfulness",
    "EmptyMaskWarning": "localisation",
    "box_masks": "localisation",
    "iou": "localisation",
    "pointing_game": "localisation",
    "relevance_mass": "localisation",
    "sparseness": "localisation",
    "EVAL_METHODS": "names",
    "HIGHER_IS_BETTER": "names",
    "METRICS": "names",
    "SanityResult": "sanity",
    "randomisation_check": "sanity",
    "spearman": "sanity",
    "ssim": "sanity",
    "Evaluation": "suite",
    "bootstrap": "suite",
    "evaluate": "suite",
    "explanation_maps": "suite",
    "predicted": "suite",
    "curve_panels": "report",
    "markdown_table": "report",
    "sanity_panels": "report",
    "EvalSet": "data",
    "load_eval_set": "data",
}

__all__ = [
    "BASELINES",
    "EVAL_METHODS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "Curve",
    "EmptyMaskWarning",
    "EvalSet",
    "Evaluation",
    "SanityResult",
    "bootstrap",
    "box_masks",
    "confidence_change",
    "curve_panels",
    "evaluate",
    "explanation_maps",
    "impute",
    "iou",
    "load_eval_set",
    "markdown_table",
    "perturbation_curve",
    "pointing_game",
    "predicted",
    "randomisation_check",
    "relevance_mass",
    "road_curve",
    "sanity_panels",
    "sparseness",
    "spearman",
    "ssim",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:
    from .data import EvalSet, load_eval_set
    from .faithfulness import (
        BASELINES,
        Curve,
        confidence_change,
        impute,
        perturbation_curve,
        road_curve,
    )
    from .localisation import (
        EmptyMaskWarning,
        box_masks,
        iou,
        pointing_game,
        relevance_mass,
        sparseness,
    )
    from .names import EVAL_METHODS, HIGHER_IS_BETTER, METRICS
    from .report import curve_panels, markdown_table, sanity_panels
    from .sanity import SanityResult, randomisation_check, spearman, ssim
    from .suite import Evaluation, bootstrap, evaluate, explanation_maps, predicted
