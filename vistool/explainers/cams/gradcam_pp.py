"""Grad-CAM++ (Chattopadhay et al., 2018): positive gradients weighted per position by the
closed-form alpha of an exponential score."""

import torch

from ._base import CamMethod, per_layer


def _map(ctx, name):
    act, grad = ctx.grid(name), ctx.gradients(name)
    g2 = grad.pow(2)
    g3 = g2 * grad
    sum_a = act.sum((2, 3))[:, None, :, None, None]
    alpha = g2 / (2 * g2 + sum_a * g3 + 1e-6)
    alpha = torch.where(grad != 0, alpha, torch.zeros_like(alpha))
    weights = (grad.clamp_min(0) * alpha).expand(-1, -1, -1, *act.shape[2:]).sum((3, 4))
    return ctx.weighted_sum(weights, act)


METHOD = CamMethod(
    "gradcam++", per_layer(_map), "positive gradients weighted by alpha (Chattopadhay et al.)",
    gradients=True, head="use", eigen_smooth=True,
    reference="pytorch_grad_cam.GradCAMPlusPlus")
