"""Grad-CAM (Selvaraju et al., 2017): the channels weighted by their spatially averaged
gradient."""

from ._base import CamMethod, per_layer


def gradcam_map(ctx, name):
    """Grad-CAM's map of layer ``name`` (N, k, h, w)."""
    return ctx.weighted_sum(ctx.gradients(name).mean((3, 4)), ctx.grid(name))


METHOD = CamMethod(
    "gradcam", per_layer(gradcam_map),
    "channels weighted by their mean gradient (Selvaraju et al.)",
    gradients=True, head="use", eigen_smooth=True,
    reference="pytorch_grad_cam.GradCAM, captum LayerGradCam")
