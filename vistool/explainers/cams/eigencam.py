"""Eigen-CAM (Muhammad & Yeasin, 2020): the first principal component of the activations;
class-agnostic, no gradients."""

from ._base import CamMethod, per_layer, principal_component


def _map(ctx, name):
    k = ctx.scores.shape[1]
    return principal_component(ctx.grid(name))[:, None].clamp_min(0).expand(-1, k, -1, -1)


METHOD = CamMethod(
    "eigencam", per_layer(_map), "first principal component of the activations (class-agnostic)",
    reference="pytorch_grad_cam.EigenCAM (its SVD sign fixed to agree with the channel sum)")
