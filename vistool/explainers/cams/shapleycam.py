"""ShapleyCAM (Cai, 2025): channels weighted by the mean of gradient - 1/2 Hessian x
activation, a second-order Shapley estimate. On piecewise-linear paths (ReLU networks,
a GAP + linear head) the Hessian term vanishes and it equals Grad-CAM."""

import torch

from . import gradcam
from ._base import CamMethod, per_layer


def _weights(ctx, name) -> torch.Tensor:
    """gradient - 1/2 Hessian-vector product with the activations, (N, k, K) per channel."""
    act = ctx.acts[name]
    per_target = []
    for j in range(ctx.scores.shape[1]):
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(ctx.scores[:, j].sum(), act, retain_graph=True,
                                          create_graph=True, allow_unused=True)
            if grad is None:
                grad = torch.zeros_like(act)
            hvp = torch.autograd.grad(grad, act, grad_outputs=act.detach(), retain_graph=True,
                                      allow_unused=True)[0] if grad.requires_grad else None
        per_target.append(grad.detach() if hvp is None else grad.detach() - 0.5 * hvp)
    return ctx.views[name].to_grid(torch.stack(per_target, 1), lead=2).mean((3, 4))


def _map(ctx, name):
    if ctx.closed_form:  # a linear head: no Hessian term
        return gradcam.gradcam_map(ctx, name)
    return ctx.weighted_sum(_weights(ctx, name), ctx.grid(name))


METHOD = CamMethod(
    "shapleycam", per_layer(_map), "gradient - 1/2 Hessian x activation (Shapley estimate)",
    gradients=True, head="use", eigen_smooth=True, forwards="one Hessian-vector product",
    reference="pytorch_grad_cam.ShapleyCAM")
