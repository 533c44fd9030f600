"""LayerCAM (Jiang et al., 2021): positive gradients times activations, per position."""

from ._base import CamMethod, per_layer


def _map(ctx, name):
    return ctx.channel_sum(ctx.gradients(name).clamp_min(0) * ctx.grid(name)[:, None])


METHOD = CamMethod(
    "layercam", per_layer(_map), "positive gradient x activation per position (Jiang et al.)",
    gradients=True, head="use", eigen_smooth=True,
    reference="pytorch_grad_cam.LayerCAM, torchcam.methods.LayerCAM")
