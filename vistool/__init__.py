"""vistool: make trained convolutional networks explain themselves.

The public API is listed in ``__all__``. Names are imported on first use (PEP 562), so
``import vistool`` and ``vistool --help`` do not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .core.lazy import lazy_exports

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    "ActivationResult": "explainers.activations",
    "activations": "explainers.activations",
    "channel_stats": "explainers.activations",
    "ATTRIBUTION_METHODS": "explainers.attribution",
    "AttributionResult": "explainers.attribution",
    "attribute": "explainers.attribution",
    "CAM_METHODS": "explainers.cam",
    "CamResult": "explainers.cam",
    "ConstantMapWarning": "core.errors",
    "explain": "explainers.cam",
    "SegmentationTarget": "explainers.targets",
    "SimilarityTarget": "explainers.targets",
    "Factorization": "explainers.factorization",
    "factorize": "explainers.factorization",
    "Evaluation": "evaluate.suite",
    "perturbation_curve": "evaluate.faithfulness",
    "pointing_game": "evaluate.localisation",
    "randomisation_check": "evaluate.sanity",
    "relevance_mass": "evaluate.localisation",
    "apply_state_dict": "core.checkpoint",
    "load_checkpoint": "core.checkpoint",
    "save_checkpoint": "core.checkpoint",
    "CheckpointError": "core.errors",
    "ImageError": "core.errors",
    "LayerError": "core.errors",
    "ModelError": "core.errors",
    "TargetError": "core.errors",
    "VistoolError": "core.errors",
    "WeightsError": "core.errors",
    "Recording": "core.hooks",
    "record": "core.hooks",
    "preserved_state": "core.state",
    "deprocess": "core.imageio",
    "expand_inputs": "core.imageio",
    "load_image": "core.imageio",
    "preprocess": "core.imageio",
    "LayerInfo": "core.layers",
    "default_layer": "core.layers",
    "layer_table": "core.layers",
    "register_model": "core.registry",
    "resolve_device": "core.devices",
    "LoadedModel": "core.zoo",
    "list_models": "core.zoo",
    "load_model": "core.zoo",
    "FeatureVisualization": "synthesize.featureviz",
    "first_layer_weights": "synthesize.featureviz",
    "Inversion": "synthesize.inversion",
    "invert": "synthesize.inversion",
    "TopExamples": "synthesize.examples",
    "render": "synthesize.featureviz",
    "top_examples": "synthesize.examples",
    "render_classes": "synthesize.featureviz",
    "render_filters": "synthesize.featureviz",
    "DreamResult": "synthesize.deepdream",
    "deepdream": "synthesize.deepdream",
    "overlay": "drawing",
    "show": "drawing",
    "StyleResult": "synthesize.style",
    "style_transfer": "synthesize.style",
    "PerceptualLoss": "synthesize.fast_style",
    "TransformerNet": "synthesize.fast_style",
    "stylize": "synthesize.fast_style",
}

__all__ = [
    "ATTRIBUTION_METHODS",
    "CAM_METHODS",
    "ActivationResult",
    "AttributionResult",
    "CamResult",
    "CheckpointError",
    "ConstantMapWarning",
    "DreamResult",
    "Evaluation",
    "Factorization",
    "FeatureVisualization",
    "ImageError",
    "Inversion",
    "LayerError",
    "LayerInfo",
    "LoadedModel",
    "ModelError",
    "PerceptualLoss",
    "Recording",
    "SegmentationTarget",
    "SimilarityTarget",
    "StyleResult",
    "TargetError",
    "TopExamples",
    "TransformerNet",
    "VistoolError",
    "WeightsError",
    "__version__",
    "activations",
    "apply_state_dict",
    "attribute",
    "channel_stats",
    "deepdream",
    "default_layer",
    "deprocess",
    "expand_inputs",
    "explain",
    "factorize",
    "first_layer_weights",
    "invert",
    "layer_table",
    "list_models",
    "load_checkpoint",
    "load_image",
    "load_model",
    "overlay",
    "perturbation_curve",
    "pointing_game",
    "preprocess",
    "preserved_state",
    "randomisation_check",
    "record",
    "register_model",
    "relevance_mass",
    "render",
    "render_classes",
    "render_filters",
    "resolve_device",
    "save_checkpoint",
    "show",
    "style_transfer",
    "stylize",
    "top_examples",
]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


if TYPE_CHECKING:  # static tools see the real names
    from .core.checkpoint import apply_state_dict, load_checkpoint, save_checkpoint
    from .core.devices import resolve_device
    from .core.errors import (
        CheckpointError,
        ConstantMapWarning,
        ImageError,
        LayerError,
        ModelError,
        TargetError,
        VistoolError,
        WeightsError,
    )
    from .core.hooks import Recording, record
    from .core.imageio import deprocess, expand_inputs, load_image, preprocess
    from .core.layers import LayerInfo, default_layer, layer_table
    from .core.registry import register_model
    from .core.state import preserved_state
    from .core.zoo import LoadedModel, list_models, load_model
    from .drawing import overlay, show
    from .evaluate.faithfulness import perturbation_curve
    from .evaluate.localisation import pointing_game, relevance_mass
    from .evaluate.sanity import randomisation_check
    from .evaluate.suite import Evaluation
    from .explainers.activations import ActivationResult, activations, channel_stats
    from .explainers.attribution import ATTRIBUTION_METHODS, AttributionResult, attribute
    from .explainers.cam import CAM_METHODS, CamResult, explain
    from .explainers.factorization import Factorization, factorize
    from .explainers.targets import SegmentationTarget, SimilarityTarget
    from .synthesize.deepdream import DreamResult, deepdream
    from .synthesize.examples import TopExamples, top_examples
    from .synthesize.fast_style import PerceptualLoss, TransformerNet, stylize
    from .synthesize.featureviz import (
        FeatureVisualization,
        first_layer_weights,
        render,
        render_classes,
        render_filters,
    )
    from .synthesize.inversion import Inversion, invert
    from .synthesize.style import StyleResult, style_transfer
