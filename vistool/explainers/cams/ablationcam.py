"""Ablation-CAM (Desai & Ramaswamy, 2020): channel c weighted by the relative drop of the
target score when channel c of the layer output is zeroed. With a GAP + linear head the
drop is W[t, c] * mean(A_c), with no extra forward pass."""

import torch
from tqdm import tqdm

from ...core.hooks import replaced_output
from ...core.progress import bar_disable
from ..inference import inference_copy, many_forwards_batch
from ._base import CamMethod, per_layer


def _drops(ctx, layer, act) -> torch.Tensor:
    """The score drops (N, k, K) from zeroing each channel, one batched forward per chunk."""
    n, k_channels = act.shape[:2]
    images, targets, view = ctx.images, ctx.index, ctx.views[layer]
    base = ctx.logits.gather(1, targets)
    net = inference_copy(ctx.net, fuse=False)
    batch_size = many_forwards_batch(net, images, ctx.batch_size)
    drops = act.new_empty((n, targets.shape[1], k_channels))
    with tqdm(total=n * k_channels, desc="ablation-cam", disable=bar_disable(ctx.progress),
              leave=False) as bar:
        for i in range(n):
            for start in range(0, k_channels, batch_size):
                chans = torch.arange(start, min(start + batch_size, k_channels),
                                     device=act.device)
                ablated = act[i].expand(len(chans), -1, -1, -1).clone()
                ablated[torch.arange(len(chans), device=act.device), chans] = 0
                with torch.inference_mode(), replaced_output(
                        net, layer, lambda o, a=ablated: view.from_grid(a, o)):
                    out = net(images[i].expand(len(chans), -1, -1, -1))
                drops[i, :, chans] = (base[i][None] - out[:, targets[i]]).T.to(act.dtype)
                bar.update(len(chans))
    return drops


def _map(ctx, name):
    act, head = ctx.grid(name), ctx.heads.get(name)
    base = ctx.logits.gather(1, ctx.index)  # (N, k)
    if head is not None:
        drops = head.weight[ctx.index] * act.mean((2, 3))[:, None, :]  # (N, k, K)
    else:
        drops = _drops(ctx, name, act)
    weights = drops / (base[..., None] + torch.where(base[..., None] >= 0, 1e-7, -1e-7))
    return ctx.weighted_sum(weights, act)


METHOD = CamMethod(
    "ablationcam", per_layer(_map), "channels weighted by the score drop when each is zeroed",
    head="use", class_target=True, forwards="one per channel and image (none with a GAP + "
    "linear head)", eigen_smooth=True, own_copy=True,
    reference="pytorch_grad_cam.AblationCAM")
