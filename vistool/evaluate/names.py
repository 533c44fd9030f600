"""The evaluation metrics by name, with the direction in which each is better; importable
without torch (the CLI's choices; a test checks they equal the library's)."""

from __future__ import annotations

from ..explainers.names import ATTRIBUTION_METHODS, CAM_METHODS

__all__ = ["EVAL_METHODS", "HIGHER_IS_BETTER", "LOCALISATION", "METRICS"]

EVAL_METHODS = (*CAM_METHODS, *ATTRIBUTION_METHODS, "random")  # random: the chance level

# name -> True when a higher value is better
HIGHER_IS_BETTER = {
    "pointing_game": True,
    "energy_pointing_game": True,
    "relevance_mass": True,
    "iou": True,
    "sparseness": True,
    "deletion_auc": False,
    "insertion_auc": True,
    "average_drop": False,
    "increase_in_confidence": True,
    "road_morf_auc": False,
    "road_lerf_auc": True,
}
METRICS = tuple(HIGHER_IS_BETTER)
LOCALISATION = ("pointing_game", "energy_pointing_game", "relevance_mass", "iou")  # need masks
