"""The names of the explanation methods, importable without torch (the CLI's choices)."""

from __future__ import annotations

__all__ = ["ATTRIBUTION_METHODS", "CAM_METHODS", "GRADIENT_METHODS"]

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
CAM_METHODS = ("cam", *GRADIENT_METHODS, "scorecam", "eigencam", "ablationcam")
ATTRIBUTION_METHODS = ("saliency", "ig", "guided-backprop", "guided-gradcam", "occlusion")
