"""The names of the explanation methods and layer layouts, importable without torch (the
CLI's choices; tests check they equal the library's)."""

from __future__ import annotations

__all__ = ["ATTRIBUTION_METHODS", "CAM_METHODS", "GRADIENT_METHODS", "LAYOUTS"]

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
CAM_METHODS = ("cam", *GRADIENT_METHODS, "scorecam", "eigencam", "ablationcam")
ATTRIBUTION_METHODS = ("saliency", "ig", "guided-backprop", "guided-gradcam", "occlusion")
LAYOUTS = ("auto", "nchw", "nhwc", "tokens")  # vistool.core.layout.LAYOUTS
