"""The book's models, registered with vistool's model registry on import.

``pyproject.toml`` declares this module in the ``vistool.models`` entry-point group, so
``vistool.load_model("lenet")`` finds these models without the library importing
``trainers``. ``get_model``/``list_models``/``model_defaults`` are the registry's.
"""

from __future__ import annotations

from vistool.core.registry import get_model, list_models, model_defaults, register_model

__all__ = ["get_model", "list_models", "model_defaults", "register_model"]

from . import classic, cnn, generative, style, transfer  # noqa: F401  (registers the models)
