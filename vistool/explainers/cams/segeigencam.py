"""Seg-Eigen-CAM (Chung & Ying, 2025): the first principal component of |gradient| x
activation, its sign corrected so that the larger extreme is positive."""

from ._base import CamMethod, per_layer, principal_component


def _map(ctx, name):
    weighted = ctx.gradients(name).abs() * ctx.grid(name)[:, None]  # (N, k, K, h, w)
    n, k = weighted.shape[:2]
    return principal_component(weighted.flatten(0, 1), sign="peak").unflatten(
        0, (n, k)).clamp_min(0)


METHOD = CamMethod(
    "segeigencam", per_layer(_map),
    "principal component of |gradient| x activation, sign-corrected",
    gradients=True, head="use", reference="pytorch_grad_cam.SegEigenCAM")
