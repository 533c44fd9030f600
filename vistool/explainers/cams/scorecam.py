"""Score-CAM (Wang et al., 2020): the channels weighted by the softmax over channels of the
target score of the input masked by each upsampled, min-max scaled channel. Masked forwards
are batched; constant channels share one forward (their mask is zero); ``channels=k`` keeps
the k highest-variance channels (Faster Score-CAM)."""

import torch
import torch.nn.functional as F
from tqdm import tqdm

from ...core.progress import bar_disable
from ..inference import inference_copy, many_forwards_batch
from ._base import CamMethod, Param, per_layer


def _select_channels(act: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Indices of the channels to use for one image's activation (K, h, w)."""
    if channels is None or channels >= act.shape[0]:
        return torch.arange(act.shape[0], device=act.device)
    return act.flatten(1).var(1).topk(channels).indices


def selected(act: torch.Tensor, channels: int | None) -> torch.Tensor:
    """(N, K, h, w) -> (N, K', h, w): each image's ``channels`` highest-variance channels
    (all of them for None)."""
    if channels is None or channels >= act.shape[1]:
        return act
    return torch.stack([a[_select_channels(a, channels)] for a in act])


def masked_scores(net, x: torch.Tensor, masks: torch.Tensor, targets: torch.Tensor,
                  batch_size: int, bar, factor: float = 1.0,
                  rows: torch.Tensor | None = None) -> torch.Tensor:
    """The target scores (M, k) of image ``x`` (C, H, W) times each mask (M, H, W) (only
    the masks ``rows``, if given) times ``factor``, in batched forward passes."""
    rows = torch.arange(len(masks), device=masks.device) if rows is None else rows
    scores = masks.new_empty((len(rows), len(targets)))
    with torch.inference_mode():
        for start in range(0, len(rows), batch_size):
            chunk = masks[rows[start:start + batch_size]]
            if factor != 1.0:
                chunk.mul_(factor)
            masked = torch.empty((len(chunk), *x.shape), dtype=x.dtype, device=x.device,
                                 memory_format=torch.channels_last)
            torch.mul(x[None], chunk[:, None], out=masked)
            scores[start:start + len(chunk)] = net(masked)[:, targets].to(masks.dtype)
            bar.update(len(chunk))
    return scores


def _channel_scores(net, x, up, targets, batch_size, bar, scale: bool) -> torch.Tensor:
    """The target scores (K', k) of image ``x`` masked by each upsampled channel ``up``
    (with ``scale``, min-max scaled in place first); the constant channels (a zero mask)
    share one forward."""
    lo, hi = up.flatten(1).aminmax(dim=1)
    if scale:
        up.sub_(lo[:, None, None]).div_((hi - lo + 1e-8)[:, None, None])
    varying = (hi > lo).nonzero()[:, 0]
    scores = up.new_empty((len(up), len(targets)))
    scores[varying] = masked_scores(net, x, up, targets, batch_size, bar, rows=varying)
    if len(varying) < len(up):
        constant = torch.ones(len(up), dtype=torch.bool, device=up.device)
        constant[varying] = False
        with torch.inference_mode():
            scores[constant] = net(torch.zeros_like(x)[None])[:, targets].to(up.dtype)
        bar.update(int(constant.sum()))
    return scores


def layer_scaled(act: torch.Tensor, size) -> torch.Tensor:
    """(K, h, w) -> (K, H, W): each channel min-max scaled at layer resolution, then
    upsampled bilinearly (torch-cam's Score-CAM masks)."""
    flat = act.flatten(1)
    lo = flat.amin(1)[:, None, None]
    scaled = (act - lo) / ((act - lo).flatten(1).amax(1)[:, None, None] + 1e-8)
    return F.interpolate(scaled[None], size=tuple(size), mode="bilinear",
                         align_corners=False)[0]


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
            at_layer = ctx.options["scaling"] == "layer"
            up = layer_scaled(a, images.shape[2:]) if at_layer else F.interpolate(
                a[None], size=images.shape[2:], mode="bilinear", align_corners=True)[0]
            weights = _channel_scores(net, images[i], up, targets[i], batch_size, bar,
                                      scale=not at_layer).softmax(0)  # (K', k)
            out[i] = ctx.weighted_sum(weights.T[None], a[None])[0]
    return out


METHOD = CamMethod(
    "scorecam", per_layer(_map), "channels weighted by the score of the input masked by them",
    class_target=True, forwards="one per channel and image (channels=k: k)", eigen_smooth=True,
    own_copy=True, params={"scaling": Param(
        "input", "where each channel is min-max scaled into a mask: 'input' after upsampling "
        "(pytorch-grad-cam), 'layer' before (torch-cam)", ("input", "layer"))},
    reference="pytorch_grad_cam.ScoreCAM (scaling=input), torchcam.methods.ScoreCAM "
    "(scaling=layer)")
