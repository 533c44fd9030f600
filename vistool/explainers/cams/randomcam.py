"""Random-CAM (pytorch-grad-cam's baseline): the channels weighted by uniform random numbers
in [-1, 1], one set per image and target, through ReLU: what a metric gives a map that knows
the layer's features but not the class. The weights come from NumPy's generator seeded by
``seed`` (pytorch-grad-cam draws the same numbers from NumPy's global generator after
``numpy.random.seed(seed)``)."""

import numpy as np
import torch

from ._base import CamMethod, Param, per_layer


def _map(ctx, name):
    act = ctx.grid(name)
    shape = (act.shape[0], ctx.scores.shape[1], act.shape[1])  # (N, k, K)
    weights = np.random.RandomState(ctx.options["seed"]).uniform(-1, 1, size=shape)
    return ctx.weighted_sum(torch.as_tensor(weights, dtype=act.dtype, device=act.device), act)


METHOD = CamMethod(
    "randomcam", per_layer(_map), "channels weighted by uniform random numbers (a baseline)",
    eigen_smooth=True, params={"seed": Param(0, "the random weights' seed")},
    reference="pytorch_grad_cam.RandomCAM")
