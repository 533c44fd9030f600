"""XGrad-CAM (Fu et al., 2020): gradients weighted by the normalised activations."""

from ._base import CamMethod, per_layer


def _map(ctx, name):
    act, grad = ctx.grid(name), ctx.gradients(name)
    denom = act.sum((2, 3))[:, None, :, None, None] + 1e-7
    return ctx.weighted_sum((grad * act[:, None] / denom).sum((3, 4)), act)


METHOD = CamMethod(
    "xgradcam", per_layer(_map), "gradients weighted by the normalised activations (Fu et al.)",
    gradients=True, head="use", eigen_smooth=True,
    reference="pytorch_grad_cam.XGradCAM, torchcam.methods.XGradCAM")
