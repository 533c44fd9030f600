"""IS-CAM (Naidu et al., 2020, "Integrated Score-CAM"): Score-CAM whose channel scores are
the mean over ``samples`` steps of the input masked by the channel's mask times a growing
factor, as torch-cam computes it: at step s the factor is the sum of j / samples for
j = 1..s (masks min-max scaled at layer resolution and upsampled); ``channels=k`` keeps
the k highest-variance channels of each image."""

from tqdm import tqdm

from ...core.progress import bar_disable
from ..inference import inference_copy, many_forwards_batch
from ._base import CamMethod, Param, per_layer
from .scorecam import layer_scaled, masked_scores, selected


def _map(ctx, name):
    images, targets, samples = ctx.images, ctx.index, ctx.options["samples"]
    act = selected(ctx.grid(name), ctx.channels)  # (N, K', h, w)
    n, k_channels = act.shape[:2]
    net = inference_copy(ctx.net, fuse=True, sample=images[:1])
    batch_size = many_forwards_batch(net, images, ctx.batch_size)
    scores = act.new_zeros((n, k_channels, targets.shape[1]))
    with tqdm(total=samples * n * k_channels, desc="is-cam", disable=bar_disable(ctx.progress),
              leave=False) as bar:
        for i in range(n):
            masks = layer_scaled(act[i], images.shape[2:])
            factor = 0.0
            for step in range(1, samples + 1):
                factor += step / samples
                scores[i] += masked_scores(net, images[i], masks, targets[i], batch_size, bar,
                                           factor=factor)
    weights = (scores / samples).softmax(1).transpose(1, 2)  # (N, k, K')
    return ctx.weighted_sum(weights, act)


METHOD = CamMethod(
    "iscam", per_layer(_map), "Score-CAM with the channel scores integrated over mask scales",
    class_target=True, forwards="samples per channel and image (channels=k: k)", eigen_smooth=True,
    own_copy=True, params={"samples": Param(10, "integration steps per channel")},
    reference="torchcam.methods.ISCAM")
