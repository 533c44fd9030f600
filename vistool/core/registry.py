"""The registry of named models that are not torchvision's (the book's models, plugins).

Packages add models through the ``vistool.models`` entry-point group: each entry point
names a module that calls :func:`register_model` when imported (``trainers`` declares
``book = "trainers.models"``). The library never imports those packages by name; the
first lookup loads every entry point once. A registered name is what a checkpoint
records as ``arch``, so vistool rebuilds an architecture without executing anything the
file names. Registering a name twice is an error, as in torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any

from torch import nn

from .errors import ModelError

__all__ = ["ENTRY_POINT_GROUP", "get_model", "list_models", "model_defaults", "register_model"]

ENTRY_POINT_GROUP = "vistool.models"
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}
_loaded = False


def register_model(name: str, input_size: tuple[int, int, int], mean: tuple[float, ...],
                   std: tuple[float, ...]):
    """Class/function decorator registering a model factory under ``name`` with its input spec."""

    def wrap(factory):
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = (factory, {"input_size": list(input_size), "mean": list(mean),
                                     "std": list(std)})
        return factory

    return wrap


def _load_plugins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:
            _loaded = False
            raise ModelError(f"the model plugin {entry.name!r} ({entry.value}) failed to "
                             f"import: {type(exc).__name__}: {exc}") from exc


def list_models() -> list[str]:
    """Registered model names, sorted."""
    _load_plugins()
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs``."""
    _load_plugins()
    if name not in _REGISTRY:
        raise KeyError(f"no book model named {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name][0](**kwargs)


def model_defaults(name: str) -> dict[str, Any]:
    """The default input size and normalisation of model ``name``."""
    _load_plugins()
    return dict(_REGISTRY[name][1])
