"""SS-CAM (Wang et al., 2020, "Smoothed Score-CAM"): Score-CAM whose channel scores are the
mean over ``samples`` noisy masks, Gaussian noise (``std``) added to each channel's mask
(min-max scaled at layer resolution and upsampled, as torch-cam makes it); ``channels=k``
keeps the k highest-variance channels of each image. The noise comes
from its own generator, seeded by ``seed``: a run is reproducible; torch-cam draws the same
noise from the global generator after ``torch.manual_seed(seed)``."""

import torch
from tqdm import tqdm

from ...core.progress import bar_disable
from ..inference import inference_copy, many_forwards_batch
from ._base import CamMethod, Param, per_layer
from .scorecam import layer_scaled, masked_scores, selected


def _map(ctx, name):
    images, targets, options = ctx.images, ctx.index, ctx.options
    act = selected(ctx.grid(name), ctx.channels)  # (N, K', h, w)
    n, k_channels = act.shape[:2]
    net = inference_copy(ctx.net, fuse=True, sample=images[:1])
    batch_size = many_forwards_batch(net, images, ctx.batch_size)
    masks = torch.stack([layer_scaled(a, images.shape[2:]) for a in act])  # (N, K', H, W)
    generator = torch.Generator().manual_seed(options["seed"])
    scores = act.new_zeros((n, k_channels, targets.shape[1]))
    with tqdm(total=options["samples"] * n * k_channels, desc="ss-cam",
              disable=bar_disable(ctx.progress), leave=False) as bar:
        for _ in range(options["samples"]):  # torch-cam's order: a batch of noise per sample
            noise = torch.randn(masks.shape, generator=generator)  # float32, as torch-cam's
            noisy = masks + noise.mul_(options["std"]).to(masks.device, masks.dtype)
            for i in range(n):
                scores[i] += masked_scores(net, images[i], noisy[i], targets[i], batch_size, bar)
    weights = (scores / options["samples"]).softmax(1).transpose(1, 2)  # (N, k, K')
    return ctx.weighted_sum(weights, act)


METHOD = CamMethod(
    "sscam", per_layer(_map), "Score-CAM with the channel scores averaged over noisy masks",
    class_target=True, forwards="samples per channel and image (channels=k: k)", eigen_smooth=True,
    own_copy=True, params={
        "samples": Param(35, "noisy masks per channel"),
        "std": Param(2.0, "the standard deviation of the Gaussian noise added to each mask"),
        "seed": Param(0, "the noise generator's seed")},
    reference="torchcam.methods.SSCAM")
