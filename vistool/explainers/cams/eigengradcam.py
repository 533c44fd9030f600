"""Eigen-Grad-CAM (pytorch-grad-cam): the first principal component of gradient x
activation, so class-discriminative unlike Eigen-CAM."""

from ._base import CamMethod, per_layer, principal_component


def _map(ctx, name):
    weighted = ctx.gradients(name) * ctx.grid(name)[:, None]  # (N, k, K, h, w)
    n, k = weighted.shape[:2]
    return principal_component(weighted.flatten(0, 1)).unflatten(0, (n, k)).clamp_min(0)


METHOD = CamMethod(
    "eigengradcam", per_layer(_map), "first principal component of gradient x activation",
    gradients=True, head="use",
    reference="pytorch_grad_cam.EigenGradCAM (its SVD sign fixed to agree with the channel sum)")
