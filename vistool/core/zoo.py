"""Loading models: torchvision names, trainers' checkpoints, user factories, plain modules.

``load_model(spec, weights=...)`` returns a :class:`LoadedModel`: the model in eval mode
on its device, with the preprocessing, class names, input size and default target
layer that belong to it.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import sys
import urllib.error
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import timm_zoo
from .cache import cache_dir, trained_checkpoints
from .checkpoint import apply_state_dict, load_checkpoint
from .devices import model_device, resolve_device
from .errors import (
    CheckpointError,
    ModelError,
    RandomWeightsWarning,
    TargetError,
    WeightsError,
    suggestion,
)
from .imageio import ImageSource, make_transform, preprocess
from .layers import LayerInfo, default_layer, layer_table
from .registry import get_model as get_book_model
from .registry import list_models as book_models
from .registry import model_defaults as book_defaults

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "list_models",
    "load_model",
    "parse_input_size",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".bin")


@dataclass
class LoadedModel:
    """A model with everything needed to feed it images and name its outputs.

    Attributes:
        model: the ``nn.Module`` (eval mode when built by :func:`load_model`).
        transform: PIL RGB image -> normalised tensor (C, H, W).
        classes: class names indexed like the model's outputs, or None.
        input_size: (C, H, W) the model expects.
        mean, std: the normalisation inside ``transform`` (per channel).
        spec: what the model was loaded from.
        metadata: checkpoint metadata (training config, metrics ...), if any.
        weights: where the weights came from, in words (``"torchvision
            ResNet18_Weights.IMAGENET1K_V1"``, ``"trained checkpoint PATH"``,
            ``"random initialisation (weights: none)"`` ...).
        random_weights: True when the weights are random, None when unknown (a factory).
        task: ``"classification"`` (the output is a logit vector (N, classes)) or
            ``"segmentation"`` (torchvision's segmentation models: a dict whose ``"out"``
            holds per-pixel logits (N, classes, H, W); explain them with a
            :class:`~vistool.explainers.targets.SegmentationTarget`).
    """

    model: nn.Module
    transform: Callable[[Any], torch.Tensor]
    classes: list[str] | None
    input_size: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    spec: str
    metadata: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    random_weights: bool | None = False
    task: str = "classification"

    def describe(self) -> dict[str, Any]:
        """What a manifest records about the model: spec, weights, input and classes."""
        return {"spec": self.spec, "weights": self.weights,
                "random_weights": self.random_weights, "task": self.task,
                "input_size": list(self.input_size),
                "mean": list(self.mean), "std": list(self.std),
                "classes": len(self.classes) if self.classes else None}

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @cached_property
    def layers(self) -> list[LayerInfo]:
        """The layer table (computed once by a dry forward pass)."""
        return layer_table(self.model, self.input_size)

    @cached_property
    def default_layer(self) -> str:
        """The usual Grad-CAM layer; see :func:`vistool.layers.default_layer`."""
        return default_layer(self.model, self.input_size, table=self.layers)

    def preprocess(self, images: Sequence[ImageSource] | ImageSource) -> torch.Tensor:
        """Load and transform images into a batch on the model's device."""
        return preprocess(images, self.transform, self.device)

    def class_name(self, index: int) -> str | None:
        """The name of class ``index``, or None when the model has no class names."""
        return self.classes[index] if self.classes and 0 <= index < len(self.classes) else None

    def class_index(self, target: int | str, num_classes: int | None = None) -> int:
        """Resolve a class index or name to an index, with a clear error when it is invalid."""
        count = num_classes if num_classes is not None else (
            len(self.classes) if self.classes else None)
        if isinstance(target, str) and not target.lstrip("-").isdigit():
            if not self.classes:
                raise TargetError(f"class {target!r} given by name, but the model has no class "
                                  "names; give an index or `classes=FILE`")
            if target not in self.classes:
                raise TargetError(f"unknown class {target!r}"
                                  + suggestion(target, self.classes, "class names"))
            return self.classes.index(target)
        index = int(target)
        if count is not None and not 0 <= index < count:
            raise TargetError(f"class index {index} is out of range; the model has {count} "
                              f"classes (0..{count - 1})")
        return index


def parse_input_size(value: int | str | Sequence[int]) -> tuple[int, int, int]:
    """``32`` -> (3, 32, 32); ``"1,28,28"`` -> (1, 28, 28); ``"64,48"`` -> (3, 64, 48)."""
    if isinstance(value, int):
        parts = [value]
    elif isinstance(value, str):
        try:
            parts = [int(p) for p in value.replace("x", ",").split(",") if p.strip()]
        except ValueError:
            parts = []
    else:
        parts = [int(p) for p in value]
    if len(parts) == 1:
        parts = [3, parts[0], parts[0]]
    elif len(parts) == 2:
        parts = [3, *parts]
    if len(parts) != 3 or min(parts) < 1:
        raise ModelError(f"input size {value!r} is not valid; give H (square), H,W or C,H,W")
    return tuple(parts)  # type: ignore[return-value]


def _read_classes(classes: str | os.PathLike | Sequence[str] | None) -> list[str] | None:
    if classes is None or isinstance(classes, (list, tuple)):
        return None if classes is None else list(classes)
    path = Path(classes)
    if not path.is_file():
        raise ModelError(f"classes file {str(path)!r} does not exist; give one name per line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ModelError(f"classes file {str(path)!r} is empty; give one name per line")
    return names


def _torchvision_names(task: str = "classification") -> list[str]:
    import torchvision

    module = (torchvision.models.segmentation if task == "segmentation" else
              torchvision.models)
    return sorted(torchvision.models.list_models(module=module))


def list_models() -> dict[str, list[str]]:
    """Model names ``load_model`` accepts, by group: torchvision classifiers
    (``"torchvision"``), torchvision semantic segmentation models (``"segmentation"``),
    the trainers' book models (``"book"``) and, with timm installed, timm's (``"timm"``,
    as ``timm:NAME``)."""
    groups = {"torchvision": _torchvision_names(),
              "segmentation": _torchvision_names("segmentation"), "book": book_models()}
    if timm_zoo.available():
        groups["timm"] = timm_zoo.names()
    return groups


def _hub_file(weights) -> Path:
    from urllib.parse import urlparse

    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


class _DropDownloadNotice(io.TextIOBase):
    """A stdout that passes everything on except torch.hub's 'Downloading: ...' line."""

    def __init__(self, target):
        self.target = target

    def write(self, text: str) -> int:
        if not text.startswith("Downloading: "):
            self.target.write(text)
        return len(text)

    def flush(self) -> None:
        self.target.flush()


@contextlib.contextmanager
def _quiet_download_notice():
    """torch.hub announces every download on stdout before trying it, which would corrupt
    ``--json`` output and, offline, precede vistool's one-line error. The download's
    progress bar (stderr) still shows."""
    with contextlib.redirect_stdout(_DropDownloadNotice(sys.stdout)):
        yield


def _build_torchvision(name: str, pretrained: bool, **kwargs) -> tuple[nn.Module, Any]:
    import torchvision

    enum = torchvision.models.get_model_weights(name).DEFAULT
    if not pretrained:
        if name in _torchvision_names("segmentation"):  # (else it fetches the backbone's)
            kwargs.setdefault("weights_backbone", None)
        return torchvision.models.get_model(name, weights=None, **kwargs), enum
    try:
        with _quiet_download_notice():
            return torchvision.models.get_model(name, weights=enum, **kwargs), enum
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
        cached = _hub_file(enum)
        raise WeightsError(
            f"pretrained weights for {name} are not cached and could not be downloaded "
            f"({getattr(exc, 'reason', exc)}); looked for {cached} (cache directory "
            f"{cached.parent}, set TORCH_HOME to move it); copy the file there, or use "
            "`weights='none'` (random init) or `weights=FILE` (a state dict)"
        ) from None


def _build_arch(arch: str, kwargs: dict[str, Any]) -> nn.Module:
    """Rebuild a checkpoint's architecture: a registered book model or a torchvision name."""
    if arch in book_models():
        return get_book_model(arch, **kwargs)
    if arch in _torchvision_names() + _torchvision_names("segmentation"):
        return _build_torchvision(arch, pretrained=False, **kwargs)[0]
    raise CheckpointError(
        f"checkpoint names architecture {arch!r}, which is neither a vistool book model nor a "
        "torchvision model; load it with `spec='file.py:factory'` and `weights=FILE`"
    )


def _call_factory(spec: str) -> nn.Module:
    target, _, attr = spec.rpartition(":")
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise ModelError(f"model file {target!r} does not exist; check the path in {spec!r}")
        mod_name = f"vistool_user_{path.stem}_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise ModelError(f"importing {target!r} failed: {type(exc).__name__}: {exc}") from exc
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise ModelError(f"cannot import module {target!r} ({exc}); check {spec!r}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise ModelError(f"{target!r} has no callable {attr!r}" + suggestion(attr, names, "names"))
    try:
        model = factory()
    except Exception as exc:
        raise ModelError(f"{spec} raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"{spec} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@dataclass
class _Built:
    """What a resolver returns: the model, what its spec says about inputs, and its weights."""

    model: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    weights: str = ""
    random_weights: bool | None = False
    resize: int | None = None


def _from_checkpoint(path: str, weights: str) -> _Built:
    state, meta = load_checkpoint(path)
    if "arch" not in meta:
        raise CheckpointError(
            f"checkpoint {path!r} does not say which architecture it holds; load it with "
            "`spec='NAME_OR_FILE.py:factory'` and `weights=FILE`"
        )
    model = _build_arch(meta["arch"], dict(meta.get("arch_kwargs", {})))
    if weights == "none":
        return _Built(model, meta, "random initialisation (weights: none)", True)
    apply_state_dict(model, state, f"checkpoint {path!r}")
    return _Built(model, meta, f"checkpoint {path}")


def _from_factory(spec: str, weights: str) -> _Built:
    model = _call_factory(spec)
    if weights != "default":
        return _Built(model, weights="random initialisation (weights: none)"
                      if weights == "none" else "", random_weights=weights == "none")
    warnings.warn(f"{spec} was given no `weights` file, so its weights are whatever the factory "
                  "sets (random unless it loads weights itself); pass `weights=FILE`",
                  RandomWeightsWarning, stacklevel=5)
    return _Built(model, weights=f"as {spec} built it (no weights file)", random_weights=None)


def _from_torchvision(name: str, weights: str) -> _Built:
    model, enum = _build_torchvision(name, pretrained=weights == "default")
    preset = enum.transforms()
    resize = int(preset.resize_size[0])
    crop = int(preset.crop_size[0]) if hasattr(preset, "crop_size") else resize  # (segmentation)
    built_for = getattr(model, "image_size", None)  # fixed-size architectures (ViT) say it
    if isinstance(built_for, int) and built_for != crop:  # e.g. vit_h_14 without its weights
        crop, resize = built_for, round(built_for * resize / crop)
    meta = {"input_size": [3, crop, crop], "mean": list(preset.mean), "std": list(preset.std),
            "classes": enum.meta.get("categories"),
            "task": "segmentation" if name in _torchvision_names("segmentation") else
            "classification"}
    pretrained = weights == "default"
    described = f"torchvision {enum}" if pretrained else "random initialisation (weights: none)"
    return _Built(model, meta, described if weights in ("default", "none") else "",
                  weights == "none", resize)


def _from_timm(name: str, weights: str) -> _Built:
    model, meta, resize = timm_zoo.build(name, pretrained=weights == "default")
    described = {"default": f"timm {name} pretrained weights",
                 "none": "random initialisation (weights: none)"}.get(weights, "")
    return _Built(model, meta, described, weights == "none", resize)


def _from_book(name: str, weights: str) -> _Built:
    if weights == "default":
        trained = trained_checkpoints(name)
        if trained:
            built = _from_checkpoint(str(trained[0]), "default")
            built.weights = f"trained checkpoint {trained[0]}"
            return built
        warnings.warn(
            f"{name} has no trained checkpoint in {cache_dir()} or runs/, so its weights are "
            f"RANDOM; train one with 'vistool train' (e.g. 'make demo' trains shapes_cnn) or "
            "pass `weights=FILE`", RandomWeightsWarning, stacklevel=5)
    built = _Built(get_book_model(name), dict(book_defaults(name)),
                   "random initialisation" + (" (weights: none)" if weights == "none" else
                                              " (no trained checkpoint found)"), True)
    return built


def _seeded_resolve(spec: str | nn.Module, spec_str: str, weights: str,
                    seed: int | None) -> _Built:
    """:func:`_resolve` with torch's generator seeded by ``seed`` (unless None) for the
    build, the caller's random state restored afterwards."""
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return _resolve(spec, spec_str, weights)


def _resolve(spec: str | nn.Module, spec_str: str, weights: str) -> _Built:
    """Build the model ``spec`` names, with its weights unless ``weights`` is a file."""
    if isinstance(spec, nn.Module):
        return _Built(spec, weights="the module as given")
    if Path(spec_str).suffix in CHECKPOINT_SUFFIXES and ":" not in spec_str:
        return _from_checkpoint(spec_str, weights)
    if spec_str.startswith(timm_zoo.PREFIX):
        return _from_timm(spec_str[len(timm_zoo.PREFIX):], weights)
    if ":" in spec_str:
        return _from_factory(spec_str, weights)
    if spec_str in _torchvision_names() + _torchvision_names("segmentation"):
        return _from_torchvision(spec_str, weights)
    if spec_str in book_models():
        return _from_book(spec_str, weights)
    known = _torchvision_names() + _torchvision_names("segmentation") + book_models()
    raise ModelError(
        f"unknown model {spec_str!r}: not a file, a module:factory or a known name"
        + suggestion(spec_str, known, "models with 'vistool models'")
    )


def _apply_weight_file(built: _Built, path: Path) -> None:
    state, file_meta = load_checkpoint(path)
    apply_state_dict(built.model, state, f"weights {str(path)!r}")
    built.meta = {**built.meta, **{k: v for k, v in file_meta.items()
                                   if k in ("input_size", "mean", "std", "classes")}}
    built.weights, built.random_weights = f"weights file {path}", False


def _normalisation(meta: dict[str, Any], channels: int, mean, std) -> tuple[tuple, tuple]:
    mean_t = tuple(float(m) for m in (mean or meta.get("mean") or IMAGENET_MEAN))
    std_t = tuple(float(s) for s in (std or meta.get("std") or IMAGENET_STD))
    if len(mean_t) != channels or len(std_t) != channels:
        if channels == 1 and mean is None and std is None and "mean" not in meta:
            return (0.5,), (0.5,)
        raise ModelError(f"mean/std have {len(mean_t)}/{len(std_t)} values but the input has "
                         f"{channels} channels; give one value per channel")
    return mean_t, std_t


def load_model(
    spec: str | os.PathLike | nn.Module,
    weights: str | os.PathLike = "default",
    device: str | torch.device | None = "auto",
    input_size: int | str | Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    classes: str | os.PathLike | Sequence[str] | None = None,
    seed: int | None = None,
) -> LoadedModel:
    """Build or load a model and everything needed to explain it.

    Args:
        spec: a torchvision classification or semantic segmentation model name
            (``"vgg16"``, ``"deeplabv3_resnet50"``), a timm model (``"timm:convnext_tiny"``,
            with the ``timm`` extra installed), a registered book
            model name (``"lenet"``, ``"shapes_cnn"``), a checkpoint written by ``trainers``
            (``.safetensors``; it rebuilds its own architecture),
            ``"path/to/file.py:factory"`` or ``"package.module:factory"`` (a callable
            returning an ``nn.Module``), or an ``nn.Module`` instance.
        weights: ``"default"`` (torchvision's pretrained weights through the torch hub
            cache; for a book model the newest trained checkpoint of its architecture in
            the vistool cache or ``runs/``; a checkpoint's own weights; a factory's own
            initialisation), ``"none"`` (random initialisation), or a path to a state
            dict / checkpoint. Random weights where trained ones were expected raise a
            :class:`~vistool.core.errors.RandomWeightsWarning`; ``LoadedModel.weights``
            always says what the weights are.
        device: ``"auto"`` (CUDA, then MPS, then CPU), ``"cpu"``, ``"cuda:1"`` ...
        input_size: (C, H, W), ``"C,H,W"`` or H; default: what the model or checkpoint
            states, else (3, 224, 224).
        mean, std: per-channel normalisation; defaults likewise (ImageNet's).
        classes: class names, or a file with one name per line.
        seed: seeds a random initialisation (``weights="none"``, a factory's own): one
            seed, one network; torch's random state is kept. None: that state draws it.

    Raises:
        ModelError, WeightsError, CheckpointError: with a message saying what to do.
    """
    dev = resolve_device(device)
    spec_str = str(spec) if not isinstance(spec, nn.Module) else type(spec).__name__
    weights = str(weights)
    built = _seeded_resolve(spec, spec_str, weights, seed)
    if weights not in ("default", "none"):
        _apply_weight_file(built, Path(weights))
    size = parse_input_size(input_size if input_size is not None
                            else built.meta.get("input_size", (3, 224, 224)))
    mean_t, std_t = _normalisation(built.meta, size[0], mean, std)
    names = _read_classes(classes) if classes is not None else built.meta.get("classes")
    if not isinstance(spec, nn.Module):
        built.model.eval()
    built.model.to(dev)
    resize = built.resize
    stated = built.meta.get("input_size")
    if resize and stated and size[1] != stated[1]:  # a size of one's own: the same margin
        resize = round(resize * size[1] / stated[1])
    return LoadedModel(
        model=built.model, transform=make_transform(size, mean_t, std_t, resize=resize),
        classes=list(names) if names else None, input_size=size, mean=mean_t, std=std_t,
        spec=spec_str, metadata=built.meta, weights=built.weights,
        random_weights=built.random_weights, task=built.meta.get("task", "classification"))
