"""HiResCAM (Draelos & Carin, 2020): the element-wise product of gradients and activations,
summed over channels (faithful to the model's computation)."""

from ._base import CamMethod, per_layer


def _map(ctx, name):
    return ctx.channel_sum(ctx.gradients(name) * ctx.grid(name)[:, None])


METHOD = CamMethod(
    "hirescam", per_layer(_map), "gradient x activation summed over channels (Draelos & Carin)",
    gradients=True, head="use", eigen_smooth=True, reference="pytorch_grad_cam.HiResCAM")
