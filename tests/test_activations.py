"""The activations API, channel statistics and channel-grid rendering."""

from __future__ import annotations

import pytest
import torch
import torchvision

from vistool import activations, channel_stats
from vistool.drawing import apply_colormap, channel_grid, normalize, overlay

SHAPES = {
    "resnet18": {"layer4": (2, 512, 7, 7), "layer2.0.conv1": (2, 128, 28, 28)},
    "vgg16": {"features.28": (2, 512, 14, 14), "classifier.3": (2, 4096)},
    "alexnet": {"features": (2, 256, 6, 6), "features.3": (2, 192, 27, 27)},
    "googlenet": {"inception5b": (2, 1024, 7, 7), "inception3a.branch2": (2, 128, 28, 28)},
    "mobilenet_v3_small": {"features": (2, 576, 7, 7), "features.1.block.0": (2, 16, 56, 56)},
}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_activation_shapes(name):
    model = torchvision.models.get_model(name, weights=None)
    model.train()  # activations() runs in eval mode and hands the flags back
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    result = activations(model, x, list(SHAPES[name]))
    assert {k: tuple(v.shape) for k, v in result.layers.items()} == SHAPES[name]
    assert result.logits.shape == (2, 1000)
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


def test_channel_stats_exact():
    act = torch.tensor([[[0.0, 2.0], [0.0, 4.0]], [[-1.0, -3.0], [0.0, 0.0]]])
    stats = channel_stats(act)
    assert stats["mean"].tolist() == [1.5, -1.0]
    assert stats["max"].tolist() == [4.0, 0.0]
    assert stats["zero_fraction"].tolist() == [0.5, 0.5]


def test_normalize_constant_map_is_zero_not_nan():
    out = normalize(torch.tensor([[[3.0, 3.0]], [[1.0, 5.0]]]))
    assert out.tolist() == [[[0.0, 0.0]], [[0.0, 1.0]]]


def test_channel_grid_layout_and_normalisation():
    act = torch.zeros(3, 2, 2)
    act[0, 0, 0] = 1.0  # channel 0: one hot pixel
    act[1] = 0.5  # channel 1: constant -> zeros under per-channel scaling
    act[2, 1, 1] = 2.0
    grid = channel_grid(act, normalization="channel", colormap="gray", cell=2, pad=1)
    # 3 channels -> 2x2 cells of 2x2 pixels with 1 pixel padding: 7x7.
    assert grid.shape == (3, 7, 7)
    assert grid[:, 1, 1].tolist() == [1.0, 1.0, 1.0]  # channel 0's hot pixel is white
    assert grid[:, 1, 4].tolist() == [0.0, 0.0, 0.0]  # channel 1 is constant: black
    assert grid[0, 5, 5].item() == 1.0  # unused fourth cell stays white padding
    layer = channel_grid(act, normalization="layer", colormap="gray", cell=2, pad=1)
    assert layer[0, 1, 1].item() == pytest.approx(128 / 255)  # 1.0 of max 2.0 -> mid grey
    assert layer[0, 5, 2].item() == 1.0  # channel 2's 2.0 is the layer maximum


def test_colormap_and_overlay():
    rgb = apply_colormap(torch.tensor([[0.0, 1.0]]), "gray")
    assert rgb.shape == (3, 1, 2) and rgb[:, 0, 0].tolist() == [0, 0, 0]
    image = torch.ones(3, 4, 4)
    heat = torch.zeros(2, 2)
    blended = overlay(image, heat, alpha=0.25, colormap="gray")
    assert blended.shape == (3, 4, 4)
    torch.testing.assert_close(blended, torch.full((3, 4, 4), 0.75))
