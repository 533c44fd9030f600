"""Names a package exports, imported on first use (PEP 562).

A package whose import must stay cheap (``import vistool`` and ``vistool --help`` do not
import torch) lists its exports as ``{name: module}`` and hands them to :func:`lazy_exports`::

    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

This module imports nothing beyond the standard library.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The module-level ``__getattr__`` and ``__dir__`` of ``package``.

    Args:
        package: the package's ``__name__``.
        exports: name -> the module that defines it, relative to the package
            (``"core.zoo"`` for ``vistool.core.zoo``).
        namespace: the package's ``globals()``; a name, once imported, is stored there, so
            later lookups skip ``__getattr__``.

    ``__getattr__`` raises ``AttributeError`` for a name that is not exported; ``__dir__``
    lists the package's globals and its exports.
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value  # later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
