"""The CAM methods: one module per method, each with one :class:`CamMethod` named
``METHOD``, the module named after the method (``gradcam_pp.py`` is ``gradcam++``,
``gradcam_elementwise.py`` is ``gradcam-elementwise``). Third-party methods register a
``CamMethod`` under the entry-point group ``vistool.cams`` and appear wherever a built-in
one does: :func:`vistool.explain`, ``vistool gradcam --method``, the dashboard and
``vistool evaluate``.
"""

from __future__ import annotations

import importlib
import warnings
from functools import cache

from ..names import ENTRY_POINT_GROUP, builtin_cam_modules, cam_entry_points
from ._base import CamContext, CamMethod, Param, per_layer, principal_component

__all__ = ["CamContext", "CamMethod", "Param", "methods", "per_layer", "principal_component"]


@cache
def methods() -> dict[str, CamMethod]:
    """Every CAM method by name: the built-in ones, then those of the ``vistool.cams``
    entry points (a name that is taken already is skipped with a warning)."""
    found = {}
    for name, module in builtin_cam_modules().items():
        found[name] = importlib.import_module(f"{__name__}.{module}").METHOD
    for point in cam_entry_points():
        method = point.load()
        if not isinstance(method, CamMethod) or method.name != point.name:
            warnings.warn(f"the {ENTRY_POINT_GROUP} entry point {point.name!r} ({point.value}) "
                          "is not a CamMethod of that name; skipped", stacklevel=2)
        elif point.name in found:
            warnings.warn(f"the {ENTRY_POINT_GROUP} entry point {point.name!r} names a method "
                          "that exists already; skipped", stacklevel=2)
        else:
            found[point.name] = method
    return found
