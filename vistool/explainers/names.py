"""The names of the explanation methods and layer layouts, importable without torch (the
CLI's choices; tests check they equal the library's).

The CAM methods are the modules of ``vistool/explainers/cams/`` (``gradcam_pp.py`` is
``gradcam++``, ``gradcam_elementwise.py`` is ``gradcam-elementwise``) and the entry points
of the ``vistool.cams`` group, read here from the file names and the installed metadata
alone, without importing them.
"""

from __future__ import annotations

import pkgutil
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

__all__ = ["ATTRIBUTION_METHODS", "CAM_METHODS", "ENTRY_POINT_GROUP", "FUSIONS", "LAYOUTS",
           "builtin_cam_modules", "cam_entry_points"]

ENTRY_POINT_GROUP = "vistool.cams"


def builtin_cam_modules() -> dict[str, str]:
    """The built-in CAM methods' names and their modules in ``vistool.explainers.cams``."""
    found = pkgutil.iter_modules([str(Path(__file__).with_name("cams"))])
    return {module.replace("_pp", "++").replace("_", "-"): module
            for module in sorted(m.name for m in found) if not module.startswith("_")}


def cam_entry_points() -> list[EntryPoint]:
    """The installed ``vistool.cams`` entry points (third-party methods)."""
    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda point: point.name)


CAM_METHODS = tuple(dict.fromkeys([*builtin_cam_modules(),
                                   *(point.name for point in cam_entry_points())]))
ATTRIBUTION_METHODS = ("saliency", "ig", "guided-backprop", "guided-gradcam", "occlusion")
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")  # vistool.core.layout.LAYOUTS
FUSIONS = ("mean", "product", "sum")  # how explain() combines several layers' maps
