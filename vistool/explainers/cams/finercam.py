"""Finer-CAM (Zhang et al., 2025): Grad-CAM of the target's score against the classes the
model confuses it with, the `comparisons` classes whose logits are nearest the target's:
sum_j p_j (y_t - alpha y_j) / sum_j p_j, p the softmax probabilities."""

import torch

from . import gradcam
from ._base import CamMethod, Param


def finer_score(output: torch.Tensor, index: torch.Tensor, options) -> torch.Tensor:
    """The Finer-CAM score (N, k) of classes ``index`` (N, k) from the model output."""
    count = min(int(options["comparisons"]), output.shape[1] - 1)
    alpha = float(options["alpha"])
    probs = output.softmax(1)
    scores = []
    for j in range(index.shape[1]):
        main = output.gather(1, index[:, j:j + 1])  # (N, 1)
        nearest = (output.detach() - main.detach()).abs().argsort(dim=1, stable=True)
        nearest = nearest[:, 1:count + 1]  # the target itself is first
        p = probs.gather(1, nearest)
        scores.append((p * (main - alpha * output.gather(1, nearest))).sum(1)
                      / (p.sum(1) + 1e-9))
    return torch.stack(scores, 1)


METHOD = CamMethod(
    "finercam", gradcam.METHOD.maps, "Grad-CAM of the target against its nearest classes",
    gradients=True, head="use", class_target=True, eigen_smooth=True, score=finer_score,
    params={"alpha": Param(1.0, "how strongly the nearest classes are subtracted"),
            "comparisons": Param(3, "how many nearest classes to compare with")},
    reference="pytorch_grad_cam.FinerCAM")
