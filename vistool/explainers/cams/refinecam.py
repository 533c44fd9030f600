"""RefineCAM (pytorch-grad-cam): Grad-CAM++ of several layers fused by the product of their
normalised maps, so an early layer's fine detail survives only where a late layer agrees."""

from . import gradcam_pp
from ._base import CamMethod

METHOD = CamMethod(
    "refinecam", gradcam_pp.METHOD.maps, "Grad-CAM++ of several layers, fused by product",
    gradients=True, head="use", eigen_smooth=True, fuse="product",
    reference="pytorch_grad_cam.RefineCAM")
