"""KPCA-CAM (Karmani et al., 2024): Eigen-CAM with kernel PCA, the first kernel principal
component of the positions' activation vectors; class-agnostic, no gradients."""

import torch

from ._base import CamMethod, Param, per_layer

KERNELS = ("sigmoid", "rbf", "poly", "linear", "cosine")


def _kernel(x: torch.Tensor, kernel: str, gamma: float, coef0: float = 1.0,
            degree: int = 3) -> torch.Tensor:
    """scikit-learn's pairwise kernels of the rows of each ``x`` (N, n, d) -> (N, n, n)."""
    if kernel == "rbf":
        return torch.exp(-gamma * torch.cdist(x, x).pow(2))
    if kernel == "cosine":
        unit = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return unit @ unit.mT
    dot = x @ x.mT
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (gamma * dot + coef0).pow(degree)
    return torch.tanh(gamma * dot + coef0)


def kernel_projection(act: torch.Tensor, kernel: str = "sigmoid",
                      gamma: float | None = None) -> torch.Tensor:
    """(N, K, h, w) -> (N, h, w): each position's score on the first kernel principal
    component (scikit-learn's ``KernelPCA(n_components=1).fit_transform`` of the centred
    (h*w, K) activations, its sign as scikit-learn fixes it: the largest magnitude
    positive). In float64 on the CPU (MPS has no float64): small (h*w)^2 eigenproblems,
    the batch's at once."""
    n, k, h, w = act.shape
    x = torch.nan_to_num(act.reshape(n, k, h * w).transpose(1, 2).cpu().double())
    x = x - x.mean(1, keepdim=True)
    gram = _kernel(x, kernel, 1.0 / k if gamma is None else gamma)
    centred = (gram - gram.mean(1, keepdim=True) - gram.mean(2, keepdim=True)
               + gram.mean((1, 2), keepdim=True))
    values, vectors = torch.linalg.eigh(centred)
    value, vector = values[:, -1:].clamp_min(0), vectors[..., -1]
    flip = vector.amin(1).abs() > vector.amax(1).abs()
    vector = torch.where(flip[:, None], -vector, vector)
    return (vector * value.sqrt()).reshape(n, h, w).to(act.device, act.dtype)


def _map(ctx, name):
    gamma = ctx.options["gamma"]
    proj = kernel_projection(ctx.grid(name), ctx.options["kernel"], gamma if gamma > 0 else None)
    return proj[:, None].clamp_min(0).expand(-1, ctx.scores.shape[1], -1, -1)


METHOD = CamMethod(
    "kpcacam", per_layer(_map), "first kernel principal component of the activations "
    "(class-agnostic)",
    params={"kernel": Param("sigmoid", "the kernel", KERNELS),
            "gamma": Param(0.0, "the kernel's gamma; 0: 1 / channels (scikit-learn's default)")},
    reference="pytorch_grad_cam.KPCA_CAM (scikit-learn KernelPCA)")
