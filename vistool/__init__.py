"""vistool: make trained convolutional networks explain themselves."""

__version__ = "0.1.0"

from .activations import ActivationResult, activations, channel_stats
from .attribution import ATTRIBUTION_METHODS, AttributionResult, attribute
from .cam import CAM_METHODS, CamResult, ConstantMapWarning, explain
from .checkpoint import apply_state_dict, load_checkpoint, save_checkpoint
from .errors import (
    CheckpointError,
    ImageError,
    LayerError,
    ModelError,
    TargetError,
    VistoolError,
    WeightsError,
)
from .hooks import Recording, preserved_state, record
from .imageio import deprocess, expand_inputs, load_image, preprocess
from .layers import LayerInfo, default_layer, layer_table
from .zoo import LoadedModel, list_models, load_model, resolve_device

__all__ = [
    "ATTRIBUTION_METHODS",
    "CAM_METHODS",
    "ActivationResult",
    "AttributionResult",
    "CamResult",
    "CheckpointError",
    "ConstantMapWarning",
    "ImageError",
    "LayerError",
    "LayerInfo",
    "LoadedModel",
    "ModelError",
    "Recording",
    "TargetError",
    "VistoolError",
    "WeightsError",
    "__version__",
    "activations",
    "apply_state_dict",
    "attribute",
    "channel_stats",
    "default_layer",
    "deprocess",
    "expand_inputs",
    "explain",
    "layer_table",
    "list_models",
    "load_checkpoint",
    "load_image",
    "load_model",
    "preprocess",
    "preserved_state",
    "record",
    "resolve_device",
    "save_checkpoint",
]
