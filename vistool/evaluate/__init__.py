"""Explanation quality: faithfulness, localisation and complexity metrics, sanity checks.

Batched, on the images' device, tensors in and out; see :func:`evaluate` for the whole
suite over several methods and :mod:`vistool.evaluate.names` for the metrics.
"""

from .faithfulness import Curve, confidence_change, impute, perturbation_curve, road_curve
from .localisation import (
    EmptyMaskWarning,
    box_masks,
    iou,
    pointing_game,
    relevance_mass,
    sparseness,
)
from .names import HIGHER_IS_BETTER, METRICS
from .sanity import SanityResult, randomisation_check, spearman, ssim
from .suite import EVAL_METHODS, Evaluation, bootstrap, evaluate, explanation_maps

__all__ = [
    "EVAL_METHODS",
    "HIGHER_IS_BETTER",
    "METRICS",
    "Curve",
    "EmptyMaskWarning",
    "Evaluation",
    "SanityResult",
    "bootstrap",
    "box_masks",
    "confidence_change",
    "evaluate",
    "explanation_maps",
    "impute",
    "iou",
    "perturbation_curve",
    "pointing_game",
    "randomisation_check",
    "relevance_mass",
    "road_curve",
    "sparseness",
    "spearman",
    "ssim",
]
