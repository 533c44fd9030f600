"""Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with the first, second and third
derivatives of the score averaged over ``samples`` noisy copies of the input (Gaussian
noise of ``std``, from its own generator seeded by ``seed``), on the activations of the
input as given. One forward and backward pass per sample.

torch-cam's SmoothGradCAMpp deviates from the paper in three ways (tests/test_cam_peers.py
checks each): its alpha's denominator sums the third derivative times the activation over
space instead of taking the activations' sum times the third derivative at the position
(equal where the gradient is constant in space), and its weights and map use the last noisy
sample's gradient and activations instead of the mean gradient and the input's."""

import torch

from ._base import CamMethod, Param, gradients_at


def _moments(ctx) -> dict[str, list[torch.Tensor]]:
    """Per layer, the mean over the noisy samples of the gradient, its square and cube."""
    generator = torch.Generator().manual_seed(ctx.options["seed"])
    images, samples = ctx.images.detach(), ctx.options["samples"]
    sums: dict[str, list[torch.Tensor]] = {}
    for _ in range(samples):
        noise = torch.randn(images.shape, generator=generator)  # float32, as torch-cam's
        noise = noise.mul_(ctx.options["std"]).to(images.device, images.dtype)
        _, grads = gradients_at(ctx, images + noise)
        for name, g in grads.items():
            powers = [g, g * g, g * g * g]
            sums[name] = powers if name not in sums else [
                total + p for total, p in zip(sums[name], powers)]
    return {name: [total / samples for total in totals] for name, totals in sums.items()}


def _maps(ctx) -> dict[str, torch.Tensor]:
    out = {}
    for name, (d1, d2, d3) in _moments(ctx).items():
        act = ctx.grid(name)
        sum_a = act.sum((2, 3))[:, None, :, None, None]
        alpha = d2 / (2 * d2 + sum_a * d3 + 1e-8)
        alpha = torch.where(d2 != 0, alpha, torch.zeros_like(alpha))
        out[name] = ctx.weighted_sum((d1.clamp_min(0) * alpha).sum((3, 4)), act)
    return out


METHOD = CamMethod(
    "smoothgradcam++", _maps, "Grad-CAM++ on derivatives averaged over noisy inputs",
    class_target=True, forwards="one forward and backward per sample", eigen_smooth=True,
    params={"samples": Param(4, "noisy copies of the input"),
            "std": Param(0.3, "the standard deviation of the Gaussian noise (input units)"),
            "seed": Param(0, "the noise generator's seed")},
    reference="torchcam.methods.SmoothGradCAMpp (its deviations from the paper corrected; "
    "as it is without noise before global pooling)")
