"""Grad-CAM element-wise (pytorch-grad-cam's GradCAMElementWise): like HiResCAM, but each
gradient x activation product goes through ReLU before the channel sum."""

from ._base import CamMethod, per_layer


def _map(ctx, name):
    return ctx.channel_sum((ctx.gradients(name) * ctx.grid(name)[:, None]).clamp_min(0))


METHOD = CamMethod(
    "gradcam-elementwise", per_layer(_map), "ReLU(gradient x activation) summed over channels",
    gradients=True, head="use", eigen_smooth=True,
    reference="pytorch_grad_cam.GradCAMElementWise")
