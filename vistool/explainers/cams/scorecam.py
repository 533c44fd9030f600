"""Score-CAM (Wang et al., 2020): the channels weighted by the softmax over channels of the
target score of the input masked by each upsampled, min-max scaled channel. Masked forwards
are batched; constant channels share one forward (their mask is zero); ``channels=k`` keeps
the k highest-variance channels (Faster Score-CAM)."""

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...core.progress import bar_disable
from ..inference import inference_copy, many_forwards_batch
from ._base import CamMethod, per_layer


def _select_channels(act: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Indices of the channels to use for one image's activation (K, h, w)."""
    if channels is None or channels >= act.shape[0]:
        return torch.arange(act.shape[0], device=act.device)
    return act.flatten(1).var(1).topk(channels).indices


def _channel_scores(net, x, up, targets, batch_size, bar) -> torch.Tensor:
    """The target scores (K', k) of image ``x`` masked by each upsampled channel ``up``."""
    lo, hi = up.flatten(1).aminmax(dim=1)
    varying = (hi > lo).nonzero()[:, 0]
    scores = up.new_empty((len(up), len(targets)))
    with torch.inference_mode():
        for start in range(0, len(varying), batch_size):
            index = varying[start:start + batch_size]
            masks = up[index].sub_(lo[index, None, None]).div_(
                (hi[index] - lo[index] + 1e-8)[:, None, None])
            masked = torch.empty((len(index), *x.shape), dtype=x.dtype, device=x.device,
                                 memory_format=torch.channels_last)
            torch.mul(x[None], masks[:, None], out=masked)
            scores[index] = net(masked)[:, targets].to(up.dtype)
            bar.update(len(index))
        if len(varying) < len(up):
            constant = torch.ones(len(up), dtype=torch.bool, device=up.device)
            constant[varying] = False
            scores[constant] = net(torch.zeros_like(x)[None])[:, targets].to(up.dtype)
            bar.update(int(constant.sum()))
    return scores


def _map(ctx, name):
    act, images, targets, channels = ctx.grid(name), ctx.images, ctx.index, ctx.channels
    n = len(images)
    net = inference_copy(ctx.net, fuse=True, sample=images[:1])
    batch_size = many_forwards_batch(net, images, ctx.batch_size)
    out = act.new_zeros((n, targets.shape[1], *act.shape[2:]))
    total = act.shape[1] if channels is None else min(channels, act.shape[1])
    with tqdm(total=n * total, desc="score-cam", disable=bar_disable(ctx.progress),
              leave=False) as bar:
        for i in range(n):
            a = act[i, _select_channels(act[i], channels)]  # (K', h, w)
            up = F.interpolate(a[None], size=images.shape[2:], mode="bilinear",
                               align_corners=True)[0]
            weights = _channel_scores(net, images[i], up, targets[i], batch_size,
                                      bar).softmax(0)  # (K', k)
            out[i] = ctx.weighted_sum(weights.T[None], a[None])[0]
    return out


METHOD = CamMethod(
    "scorecam", per_layer(_map), "channels weighted by the score of the input masked by them",
    class_target=True, forwards="one per channel and image (channels=k: k)", eigen_smooth=True,
    own_copy=True, reference="pytorch_grad_cam.ScoreCAM, torchcam.methods.ScoreCAM")
