"""Small convolutional classifiers with a global-average-pool + linear head."""

from __future__ import annotations

from torch import nn

from . import register_model

SHAPES_MEAN = (0.5, 0.5, 0.5)
SHAPES_STD = (0.25, 0.25, 0.25)


def _block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return layers


@register_model("shapes_cnn", input_size=(3, 64, 64), mean=SHAPES_MEAN, std=SHAPES_STD)
class ShapesCNN(nn.Module):
    """Four conv blocks (BN, ReLU, max-pool on the first three), global average pool, linear.

    The GAP + linear head makes it a CAM model: ``features`` is the Grad-CAM layer.
    """

    def __init__(self, num_classes: int = 5, in_channels: int = 3, width: int = 16,
                 image_size: int = 64):  # any size >= 8: the head pools globally
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(in_channels, w, True),
            *_block(w, 2 * w, True),
            *_block(2 * w, 4 * w, True),
            *_block(4 * w, 4 * w, False),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4 * w, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.features(x))))
