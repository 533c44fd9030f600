"""FullGrad (Srinivas & Fleuret, 2019): |input gradient x input| plus, for every convolution
and batch norm with a bias, |bias x gradient of its output|, each channel min-max scaled
and upsampled to the input, summed. It explains the whole network at once: ``layer`` is
not used, and the map (at input resolution) is keyed ``"input"``. One more forward and
backward pass, through every layer with a bias and the input."""

import torch
import torch.nn.functional as F
from torch import nn

from ...core.hooks import record
from ._base import CamMethod


def _bias(module: nn.Module) -> torch.Tensor:
    """The bias a layer adds; a batch norm's folds in its running statistics."""
    if isinstance(module, nn.BatchNorm2d):
        scale = module.weight / torch.sqrt(module.running_var + module.eps)
        return module.bias - module.running_mean * scale
    return module.bias


def _bias_layers(net: nn.Module) -> list[str]:
    """The convolutions and (affine, tracking) batch norms with a bias, as pytorch-grad-cam
    picks them (exactly these classes)."""
    return [name for name, m in net.named_modules()
            if (type(m) is nn.Conv2d and m.bias is not None)
            or (type(m) is nn.BatchNorm2d and m.bias is not None
                and m.running_mean is not None)]


def _scaled_sum(values: torch.Tensor, size) -> torch.Tensor:
    """(N, C, h, w) -> (N, H, W): each channel min-max scaled (pytorch-grad-cam's epsilon),
    summed over channels and upsampled bilinearly (as upsampling each channel and summing:
    the interpolation is linear)."""
    flat = values.flatten(2)
    shifted = values - flat.amin(2)[..., None, None]
    scaled = (shifted / (1e-7 + shifted.flatten(2).amax(2)[..., None, None])).sum(1, True)
    if tuple(scaled.shape[2:]) != tuple(size):
        scaled = F.interpolate(scaled, size=tuple(size), mode="bilinear", align_corners=False)
    return scaled[:, 0]


def _maps(ctx) -> dict[str, torch.Tensor]:
    names = _bias_layers(ctx.net)
    modules = dict(ctx.net.named_modules())
    biases = [_bias(modules[n]).detach()[None, :, None, None] for n in names]
    images = ctx.images.detach().requires_grad_(True)
    size, targets = images.shape[2:], ctx.index
    out = []
    with torch.enable_grad(), record(ctx.net, names, gradients=True) as rec:
        output = ctx.net(images)
        scores = (output.gather(1, targets) if ctx.method.score is None
                  else ctx.method.score(output, targets, ctx.options))
        acts = [rec[n] for n in names]
        for j in range(targets.shape[1]):
            grads = torch.autograd.grad(scores[:, j].sum(), [images, *acts],
                                        retain_graph=j < targets.shape[1] - 1,
                                        allow_unused=True)
            total = _scaled_sum((grads[0] * images).abs().detach(), size)
            for bias, grad in zip(biases, grads[1:]):
                if grad is not None:
                    total = total + _scaled_sum((bias * grad).abs(), size)
            out.append(total)
    return {"input": torch.stack(out, 1).clamp_min(0)}


METHOD = CamMethod(
    "fullgrad", _maps, "input gradient x input plus every bias's gradient (whole network)",
    class_target=True, forwards="one more forward and backward (every bias layer, the input)",
    reference="pytorch_grad_cam.FullGrad")
