"""timm models: ``load_model("timm:NAME")`` (timm is the optional extra ``vistool[timm]``).

The model comes from ``timm.create_model``; its data config (``timm.data.
resolve_data_config``) sets the input size, the mean and std, and the resize before the
centre crop (the size over ``crop_pct``); ImageNet models get their class names.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from torch import nn

from .errors import ModelError, WeightsError, suggestion

PREFIX = "timm:"


def available() -> bool:
    """Whether timm is installed."""
    return importlib.util.find_spec("timm") is not None


def _timm():
    try:
        import timm
        import timm.data
    except ImportError:
        raise ModelError("timm models need timm, which is not installed; install the extra: "
                         "pip install 'vistool[timm]'") from None
    return timm


def names() -> list[str]:
    """Every model name timm knows, prefixed ``timm:`` (empty without timm)."""
    return [PREFIX + name for name in _timm().list_models()] if available() else []


def build(name: str, pretrained: bool) -> tuple[nn.Module, dict[str, Any], int]:
    """The timm model ``name`` (an architecture, or ``architecture.tag`` for one of its
    pretrained weights), what its data config says (input size, mean, std, classes) and
    the size to resize to before the crop.

    Raises:
        ModelError: timm missing, an unknown name (with the closest ones).
        WeightsError: pretrained weights neither cached nor downloadable.
    """
    timm = _timm()
    known = timm.list_models()
    if name.partition(".")[0] not in known:
        raise ModelError(f"unknown timm model {name!r}" + suggestion(
            name, known, "timm models with 'vistool models'"))
    try:
        model = timm.create_model(name, pretrained=pretrained)
    except (OSError, RuntimeError, ValueError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(
            f"pretrained weights for timm:{name} are not cached and could not be downloaded "
            f"({reason}); timm keeps them in the Hugging Face cache (HF_HOME); copy them "
            "there, or use `weights='none'` (random init) or `weights=FILE` (a state dict)"
        ) from None
    config = timm.data.resolve_data_config({}, model=model)
    size = [int(v) for v in config["input_size"]]
    meta = {"input_size": size, "mean": list(config["mean"]), "std": list(config["std"]),
            "classes": _classes(timm, model), "task": "classification",
            "interpolation": config.get("interpolation")}
    return model, meta, round(size[1] / config.get("crop_pct", 1.0))


def _classes(timm, model: nn.Module) -> list[str] | None:
    """ImageNet class names (the first name of each class's description, as torchvision
    spells them) when the model's classifier is an ImageNet one, else None."""
    try:
        subset = timm.data.infer_imagenet_subset(model)
        if subset is None:
            return None
        return [d.split(",")[0] for d in timm.data.ImageNetInfo(subset).label_descriptions()]
    except (AttributeError, ValueError, OSError):  # (older timm, other heads)
        return None
