"""Registry of the book's models: ``get_model(name, **kwargs)``, ``list_models()``.

A registered name is what a checkpoint records as ``arch``, so vistool can rebuild the
architecture without executing anything named by the file. Registering a name twice is
an error (as in torchvision).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

__all__ = ["get_model", "list_models", "model_defaults", "register_model"]

_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {}


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


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs``."""
    if name not in _REGISTRY:
        raise KeyError(f"no book model named {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name][0](**kwargs)


def model_defaults(name: str) -> dict[str, Any]:
    """The default input size and normalisation of model ``name``."""
    return dict(_REGISTRY[name][1])


from . import classic, cnn, generative, transfer  # noqa: E402,F401  (registers the models)
