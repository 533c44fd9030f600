"""FEM, the Feature Explanation Method (Fuad et al., 2020): each channel weighted by the
share of its positions above its mean + k standard deviations; class-agnostic, no
gradients."""

from ._base import CamMethod, Param, per_layer


def _map(ctx, name):
    act = ctx.grid(name)
    flat = act.flatten(2)
    mean = flat.mean(2, keepdim=True)
    # the standard deviation in two passes, as NumPy's (torch.std: 10x slower on the CPU)
    threshold = mean + ctx.options["k"] * (flat - mean).square().mean(2, keepdim=True).sqrt()
    weights = (flat > threshold).to(act.dtype).mean(2)  # (N, K)
    k = ctx.scores.shape[1]
    return ctx.weighted_sum(weights[:, None].expand(-1, k, -1), act)


METHOD = CamMethod(
    "fem", per_layer(_map), "channels weighted by their share of k-sigma peaks (class-agnostic)",
    eigen_smooth=True, params={"k": Param(2.0, "the k of the k-sigma threshold")},
    reference="pytorch_grad_cam.FEM")
