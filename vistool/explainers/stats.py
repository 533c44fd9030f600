"""Numbers that describe a heatmap, for sorting and filtering many explanations."""

from __future__ import annotations

import torch

__all__ = ["map_statistics"]


def map_statistics(maps: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per map of ``maps`` (N, H, W), non-negative: ``peak_y``/``peak_x`` (the maximum's
    row and column as fractions of the height and width, pixel centres), ``centre_energy``
    (the share of the map's sum in the central half of each side; 0 for a blank map) and
    ``entropy`` (of the map as a distribution over pixels, divided by log(H·W): 1 for a
    flat map, 0 for a single pixel; 1 for a blank map)."""
    n, h, w = maps.shape
    flat = maps.reshape(n, -1).float().clamp_min(0)
    peak = flat.argmax(1)
    total = flat.sum(1)
    centre = maps[:, h // 4: h - h // 4, w // 4: w - w // 4].float().clamp_min(0)
    share = torch.where(total > 0, centre.reshape(n, -1).sum(1) / total.clamp_min(1e-12),
                        torch.zeros_like(total))
    p = flat / total.clamp_min(1e-12)[:, None]
    entropy = -(p * p.clamp_min(1e-12).log()).sum(1) / torch.log(torch.tensor(float(h * w)))
    return {"peak_y": ((peak // w).float() + 0.5) / h, "peak_x": ((peak % w).float() + 0.5) / w,
            "centre_energy": share, "entropy": torch.where(total > 0, entropy,
                                                           torch.ones_like(entropy))}
