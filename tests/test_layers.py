"""Layer tables, name resolution and default target layers."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from vistool import LayerError, default_layer, layer_table
from vistool.core.layers import resolve_layers

# (model, number of named modules, {layer: output shape}, default layer)
PINNED = {
    "resnet18": (67, {"conv1": [1, 64, 112, 112], "layer3": [1, 256, 14, 14],
                      "layer4": [1, 512, 7, 7], "avgpool": [1, 512, 1, 1], "fc": [1, 1000]},
                 "layer4"),
    "vgg16": (41, {"features.28": [1, 512, 14, 14], "features.30": [1, 512, 7, 7],
                   "avgpool": [1, 512, 7, 7], "classifier.6": [1, 1000]}, "features"),
    "alexnet": (23, {"features.0": [1, 64, 55, 55], "features": [1, 256, 6, 6],
                     "classifier.6": [1, 1000]}, "features"),
    "googlenet": (None, {"inception4e": [1, 832, 14, 14], "inception5b": [1, 1024, 7, 7],
                         "fc": [1, 1000]}, "inception5b"),
    "mobilenet_v3_small": (None, {"features.0": [1, 16, 112, 112], "features": [1, 576, 7, 7],
                                  "classifier.3": [1, 1000]}, "features"),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_torchvision_layer_tables(name):
    count, shapes, default = PINNED[name]
    model = torchvision.models.get_model(name, weights=None).eval()
    table = layer_table(model, (3, 224, 224))
    rows = {row.name: row for row in table}
    if count is not None:
        assert len(table) == count
    for layer, shape in shapes.items():
        assert rows[layer].output_shape == shape, layer
    assert default_layer(model, table=table) == default
    assert rows[next(iter(shapes))].params == sum(
        p.numel() for p in dict(model.named_modules())[next(iter(shapes))].parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_layer_table_rows_and_json(tiny_net):
    table = layer_table(tiny_net, (1, 6, 6))
    assert [r.to_dict() for r in table] == [
        {"name": "conv", "type": "Conv2d", "output_shape": [1, 2, 6, 6], "params": 20, "calls": 1},
        {"name": "relu", "type": "ReLU", "output_shape": [1, 2, 6, 6], "params": 0, "calls": 1},
        {"name": "pool", "type": "AdaptiveAvgPool2d", "output_shape": [1, 2, 1, 1], "params": 0,
         "calls": 1},
        {"name": "fc", "type": "Linear", "output_shape": [1, 3], "params": 9, "calls": 1},
    ]
    assert default_layer(tiny_net, (1, 6, 6)) == "conv"


def test_layer_table_leaves_train_mode_and_bn_stats_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten())
    model.train()
    before = model[1].running_mean.clone()
    layer_table(model, (3, 8, 8))
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, before)
    assert model[1].num_batches_tracked.item() == 0


def test_shared_module_counts_calls():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x):
            return self.conv(self.conv(x))

    rows = {r.name: r for r in layer_table(Twice(), (2, 5, 5))}
    assert rows["conv"].calls == 2


def test_unknown_layer_suggests_closest():
    model = torchvision.models.resnet18(weights=None)
    with pytest.raises(LayerError, match=r"no layer named 'layer4\.1\.conv3'.*'layer4\.1\.conv2'"):
        resolve_layers(model, ["layer4.1.conv3"])
    with pytest.raises(LayerError, match="list the valid layers"):
        resolve_layers(model, ["zzzzzz"])


def test_no_spatial_layer_is_an_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with pytest.raises(LayerError, match="no layer with a spatial output"):
        default_layer(model, (1, 2, 2))
