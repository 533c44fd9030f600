"""SESS (Tursun et al., 2022, "Saliency Enhancing with Scaling and Sliding"): the input
resized to several scales, a square window slid over each, every window explained by a
``base`` method and weighted by its class probability, pasted back and fused: the mean of
the values above ``theta`` at each pixel (``pool=mean``) or their maximum, then blurred. The
map is at input resolution, keyed ``"input"``; ``layer`` is the base method's. As
pytorch-grad-cam's SESS: its scales (``scales`` of them, from the window size up by
``scale_step`` times it), its windows (the shorter side; those past the border shifted
back in) and its fusion."""

import warnings

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import resize
from tqdm import tqdm

from ...core.errors import ConstantMapWarning, VistoolError
from ...core.progress import bar_disable
from ._base import CamMethod, Param


def _starts(length: int, step: int, window: int) -> list[int]:
    """Where the windows along one side start; the last one ends at the border."""
    starts = []
    for start in range(0, length, step):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _patches(image: torch.Tensor, window: int, step: int, scales: list[int]):
    """Every scale's windows (P, C, window, window) and where each was taken from
    (x, y, the scaled width, the scaled height)."""
    patches, places = [], []
    for scale in scales:
        scaled = resize(image[None], scale)[0]  # the shorter side to ``scale``, antialiased
        height, width = scaled.shape[-2:]
        for y in _starts(height, step, window):
            for x in _starts(width, step, window):
                patches.append(scaled[:, y:y + window, x:x + window])
                places.append((x, y, width, height))
    return torch.stack(patches), places


def _blur(cam: torch.Tensor, sigma: float) -> torch.Tensor:
    """An 11 x 11 Gaussian blur of (H, W), the border reflected (OpenCV's default)."""
    taps = torch.arange(11, dtype=torch.float64, device=cam.device) - 5
    kernel = torch.exp(-taps ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(cam.dtype)
    out = F.pad(cam[None, None], (5, 5, 5, 5), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 11, 1))
    return F.conv2d(out, kernel.view(1, 1, 1, 11))[0, 0]


def _base(ctx) -> str:
    from . import methods

    base = ctx.options["base"]
    if base == "sess" or base not in methods():
        raise VistoolError(f"sess's option base must be another CAM method, not {base!r} "
                           "('vistool methods' lists them)")
    return base


def _weights(ctx, patches: torch.Tensor, target: int) -> torch.Tensor:
    """Each window's weight: its target probability (``weights=score``: its score) over the
    highest one, negative ones as zero."""
    with torch.inference_mode():
        out = torch.cat([ctx.net(chunk) for chunk in patches.split(ctx.batch_size or 32)])
    if ctx.options["weights"] == "softmax":
        out = out.softmax(1)
    scores = out[:, target].clamp_min(0).float()
    return scores / scores.max() if scores.max() > 0 else torch.ones_like(scores)


def _enhanced(ctx, base: str, image: torch.Tensor, target: int, bar) -> torch.Tensor:
    """One image's map for one class: (H, W)."""
    options, size = ctx.options, image.shape[-2:]
    window = options["window"] or min(size)
    step = round(window * options["scale_step"])
    patches, places = _patches(image, window, options["step"] or window,
                               [window + step * i for i in range(options["scales"])])
    weights = _weights(ctx, patches, target)
    order = weights.argsort(stable=True)[int(len(weights) * options["pre_filter"]):]
    total = torch.zeros(size, device=image.device)
    counts = torch.zeros(size, device=image.device)
    for chunk in order.split(ctx.batch_size or 32):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConstantMapWarning)
            maps = ctx.explain(ctx.net, patches[chunk], base, targets=target,
                           layer=ctx.layers, layout=ctx.layout, reshape=ctx.reshape,
                           eigen_smooth=ctx.eigen_smooth).maps
        for cam, j in zip(maps, chunk.tolist()):
            x, y, width, height = places[j]
            full = cam.new_zeros((height, width))
            full[y:y + window, x:x + window] = cam * weights[j]
            full = F.interpolate(full[None, None], size=tuple(size), mode="bilinear",
                                 align_corners=False)[0, 0]
            if options["pool"] == "max":
                total = torch.maximum(total, full)
            else:
                above = full > options["theta"]
                total += torch.where(above, full, 0)
                counts += above
        bar.update(len(chunk))
    cam = total if options["pool"] == "max" else torch.where(
        counts > 0, total / counts.clamp_min(1), 0)
    return _blur(cam, options["blur"]) if options["blur"] > 0 else cam


def _maps(ctx) -> dict[str, torch.Tensor]:
    base, (n, k) = _base(ctx), ctx.index.shape
    images = ctx.images.detach()
    out = images.new_zeros((n, k, *images.shape[2:]), dtype=torch.float32)
    with tqdm(desc="sess", disable=bar_disable(ctx.progress), leave=False) as bar:
        for i in range(n):
            for j in range(k):
                out[i, j] = _enhanced(ctx, base, images[i], int(ctx.index[i, j]), bar)
    return {"input": out}


METHOD = CamMethod(
    "sess", _maps, "a base method's maps of windows slid over several scales, fused",
    class_target=True, forwards="per image and class: one per window (12 scales of a "
    "224-pixel input: 122), plus the base method's for each", eigen_smooth=True,
    own_copy=True, params={
        "base": Param("gradcam", "the CAM method that explains each window"),
        "scales": Param(12, "how many scales, from the window size up"),
        "scale_step": Param(2 / 7, "each scale's growth, as a fraction of the window size"),
        "window": Param(0, "the square window's side in pixels (0: the input's shorter side)"),
        "step": Param(0, "the window's stride in pixels (0: the window size)"),
        "pre_filter": Param(0.0, "the fraction of lowest-scoring windows left out"),
        "theta": Param(0.0, "pool=mean: values at or below it do not count"),
        "pool": Param("mean", "how the windows' maps combine", ("mean", "max")),
        "blur": Param(5.0, "the sigma of the 11 x 11 Gaussian blur of the fused map (0: none)"),
        "weights": Param("softmax", "each window's weight: its class probability or its "
                         "score (for outputs that are not logits)", ("softmax", "score"))},
    reference="pytorch_grad_cam.sess.SESS")
