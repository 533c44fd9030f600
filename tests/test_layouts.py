"""Layers that keep their grid channels-last (Swin) or as tokens (ViT): detection, the
exact maps of tiny hand-built models, Swin and ViT against captum with the same reshape,
the default layers and the command's one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torch import nn

import vistool
from vistool.cli import main
from vistool.core import layout as layout_module
from vistool.core.layout import GridView, detect, grid_view
from vistool.explainers import names
from vistool.explainers.cam import CAM_METHODS, explain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("shape", "size", "expected"), [
    ((1, 512, 7, 7), (224, 224), GridView("nchw", (7, 7))),
    ((1, 7, 7, 768), (224, 224), GridView("nhwc", (7, 7))),
    ((1, 197, 768), (224, 224), GridView("tokens", (14, 14), 1)),
    ((1, 198, 768), (224, 224), GridView("tokens", (14, 14), 2)),
    ((1, 196, 384), (224, 224), GridView("tokens", (14, 14), 0)),
    ((1, 768, 5, 7), (149, 224), GridView("nchw", (5, 7))),
    ((1, 5, 7, 768), (149, 224), GridView("nhwc", (5, 7))),
    ((1, 64, 56, 56), (224, 224), GridView("nchw", (56, 56))),  # not (64, 56) channels-last
    ((1, 1000), (224, 224), None),
    ((1, 7, 768), (224, 224), None),  # 7 tokens: no grid of a square image
])
def test_layouts_are_detected_from_the_output_and_input_shapes(shape, size, expected):
    assert detect(shape, size) == expected


@pytest.mark.parametrize("view", [GridView("nchw", (3, 4)), GridView("nhwc", (3, 4)),
                                  GridView("tokens", (3, 4), 1), GridView("tokens", (3, 4))])
def test_grid_view_round_trips_and_maps_leading_dims(view):
    native = {"nchw": (2, 5, 3, 4), "nhwc": (2, 3, 4, 5), "tokens": (2, 12 + view.extra, 5)}
    x = torch.randn(native[view.layout])
    grid = view.to_grid(x)
    assert grid.shape == (2, 5, 3, 4)
    torch.testing.assert_close(view.from_grid(grid, x), x, rtol=0, atol=0)
    stacked = view.to_grid(torch.stack([x, 2 * x], 1), lead=2)
    torch.testing.assert_close(stacked[:, 1], 2 * grid, rtol=0, atol=0)


def test_a_layer_without_a_grid_or_a_wrong_layout_is_one_line():
    with pytest.raises(vistool.LayerError, match=r"'fc' outputs Tensor of shape \(1, 10\), "
                       r"which is not a spatial grid for a 224x224 input"):
        grid_view("fc", torch.zeros(1, 10), (224, 224))
    with pytest.raises(vistool.LayerError, match="as tokens"):
        grid_view("layer4", torch.zeros(1, 512, 7, 7), (224, 224), "tokens")
    assert names.LAYOUTS == layout_module.LAYOUTS


class Tiny(nn.Module):
    """A patch embedding whose grid leaves the target layer ``grid`` as (N, 6, 4, 4),
    channels-last or as tokens behind a class token; the head pools squared activations
    (so the gradients vary with the position) over the grid only. Every layout computes
    the same function of the same weights."""

    def __init__(self, layout: str):
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 6, 4, stride=4)
            self.cls = nn.Parameter(torch.randn(1, 1, 6))
            self.fc = nn.Linear(6, 3)
        self.grid = nn.Identity()
        self.layout = layout

    def forward(self, x):
        a = torch.tanh(self.conv(x))
        n = len(a)
        if self.layout == "nhwc":
            return self.fc((self.grid(a.permute(0, 2, 3, 1)) ** 2).mean((1, 2)))
        if self.layout == "tokens":
            tokens = torch.cat([self.cls.expand(n, -1, -1), a.flatten(2).transpose(1, 2)], 1)
            return self.fc((self.grid(tokens)[:, 1:] ** 2).mean(1))
        return self.fc((self.grid(a) ** 2).mean((2, 3)))


@pytest.mark.parametrize("layout", ["nhwc", "tokens"])
@pytest.mark.parametrize("method", [m for m in CAM_METHODS
                                    if m not in ("cam", "dff", "fullgrad", "legrad")])
# cam and dff need a linear head; fullgrad explains the whole network, not a layer; legrad
# explains the attention of vision transformers (tests/test_cam_peers.py)
def test_every_method_gives_the_nchw_twins_map_on_a_tiny_model(layout, method):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = explain(Tiny("nchw"), x, method, targets=1, layer="grid")
    result = explain(Tiny(layout), x, method, targets=1, layer="grid")
    key, shape = ("input", (2, 16, 16)) if method == "sess" else ("grid", (2, 4, 4))
    assert result.raw[key].shape == shape  # sess: the fused windows at input resolution
    torch.testing.assert_close(result.raw[key], reference.raw[key], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.maps, reference.maps, rtol=1e-5, atol=1e-6)
    assert reference.raw[key].abs().sum() > 0


def test_explain_inside_no_grad_gives_the_same_maps():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    free = explain(Tiny("tokens"), x, "gradcam", layer="grid")
    with torch.no_grad():
        inside = explain(Tiny("tokens"), x, "gradcam", layer="grid")
    torch.testing.assert_close(inside.maps, free.maps, rtol=0, atol=0)
    assert free.maps.amax() == 1


class AsGrid(nn.Module):
    """The target layer followed by its grid: captum's layer sees (N, C, H, W)."""

    def __init__(self, inner: nn.Module, view: GridView):
        super().__init__()
        self.inner, self.view, self.grid = inner, view, nn.Identity()

    def forward(self, x):
        out = self.inner(x)
        return self.view.from_grid(self.grid(self.view.to_grid(out)), out)


@pytest.mark.parametrize(("name", "layer", "grid"), [
    ("swin_t", "features", (7, 7)),
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", (14, 14)),
])
def test_swin_and_vit_gradcam_equal_captum_with_the_same_reshape(name, layer, grid):
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    if name.startswith("vit"):  # torchvision zeroes the head: every logit would be constant
        nn.init.normal_(model.heads.head.weight, std=0.02)
    loaded = vistool.load_model(model, device="cpu")
    assert loaded.default_layer == layer
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    result = explain(loaded, x, "gradcam")
    ours = result.raw[layer]
    assert ours.shape == (1, *grid) and ours.amax() > 0
    parent, _, child = layer.rpartition(".")
    holder = model.get_submodule(parent) if parent else model
    view = grid_view(layer, torch.zeros(1, *{"swin_t": (7, 7, 768)}.get(name, (197, 768))),
                     (224, 224))
    wrapped = AsGrid(getattr(holder, child), view)
    setattr(holder, child, wrapped)
    attr = LayerGradCam(model, wrapped.grid).attribute(x, target=result.targets,
                                                       relu_attributions=True)
    assert (ours - attr[:, 0]).abs().max() <= 1e-5 * attr.abs().max()


def test_gradcam_command_maps_swin_on_its_grid_and_refuses_a_layer_without_one(tmp_path,
                                                                               capsys):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "img.png")
    out = tmp_path / "out"
    assert main(["gradcam", "--model", "swin_t", "--weights", "none", "--input-size", "112",
                 "--out", str(out), str(tmp_path / "img.png")]) == 0
    info = json.loads((out / "manifest.json").read_text())
    (raw,) = info["outputs"][0]["raw"]
    assert np.load(out / raw).shape == (4, 4)
    assert info["options"]["layer"] == ["features"] and info["options"]["layout"] == "auto"
    capsys.readouterr()
    status = main(["gradcam", "--model", "swin_t", "--weights", "none", "--input-size", "112",
                   "--layer", "head", "--out", str(tmp_path / "bad"), str(tmp_path / "img.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and "'head' outputs Tensor of shape (1, 1000)" in err[-1]
    assert "--layout nchw|nhwc|tokens" in err[-1] and not (tmp_path / "bad").exists()


@pytest.mark.parametrize("layout", ["nhwc", "tokens"])
def test_activations_are_channel_grids_for_channels_last_and_token_layers(layout):
    from vistool.explainers.activations import activations

    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = activations(Tiny("nchw"), x, ["grid", "fc"])
    result = activations(Tiny(layout), x, ["grid", "fc"])
    torch.testing.assert_close(result.layers["grid"], reference.layers["grid"], rtol=0, atol=0)
    assert result.layouts == {"grid": layout, "fc": None}
    assert reference.layouts["grid"] == "nchw" and result.layers["fc"].shape == (2, 3)
    with pytest.raises(vistool.LayerError, match="as nchw"):
        activations(Tiny("tokens"), x, "grid", layout="nchw")


def test_activations_command_renders_swin_channels_last_grids(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "img.png")
    out = tmp_path / "out"
    assert main(["activations", "--model", "swin_t", "--weights", "none", "--input-size", "112",
                 "--channels", "0-15", "--out", str(out), str(tmp_path / "img.png")]) == 0
    (entry,) = json.loads((out / "manifest.json").read_text())["outputs"]
    assert entry["layer"] == "features" and entry["layout"] == "nhwc"
    assert entry["shape"] == [768, 4, 4] and np.load(out / entry["npy"]).shape == (768, 4, 4)


def test_an_error_inside_the_models_forward_is_one_line_and_debug_shows_it(tmp_path, capsys):
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "img.png")
    argv = ["gradcam", "--model", "vit_b_16", "--weights", "none", "--input-size", "112",
            "--layer", "encoder", "--out", str(tmp_path / "out"), str(tmp_path / "img.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "failed in its VisionTransformer module (AssertionError: Wrong " \
        "image height! Expected 224 but got 112!) on an input of --input-size 112" in err[0]
    assert "rerun with --debug" in err[0] and not (tmp_path / "out").exists()
    with pytest.raises(AssertionError, match="Wrong image height"):
        main([*argv, "--debug"])


def test_weights_none_takes_the_input_size_the_architecture_was_built_for(monkeypatch):
    """vit_h_14's default weights are for 518 pixels; the model built without them for 224."""
    from torchvision.models import VisionTransformer

    def tiny(name, weights=None, **kwargs):  # vit_h_14's structure at a test's cost
        assert name == "vit_h_14" and weights is None
        return VisionTransformer(224, 16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8)

    monkeypatch.setattr(torchvision.models, "get_model", tiny)
    loaded = vistool.load_model("vit_h_14", weights="none", device="cpu")
    assert loaded.input_size == (3, 224, 224)
    assert loaded.preprocess(np.zeros((300, 400, 3), np.uint8)).shape == (1, 3, 224, 224)


def test_a_zero_head_is_not_taken_for_a_closed_form():
    from vistool.explainers.cam import linear_head

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3))
    x = torch.zeros(1, 3, 8, 8)
    assert linear_head(model, "0", x) is model[3]
    nn.init.zeros_(model[3].weight)
    assert linear_head(nn.Sequential(*model), "0", x) is None  # a new model: no cached probe


def test_a_reshape_callable_maps_any_layout_and_ablation_refuses_it():
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    reference = explain(Tiny("nchw"), x, "layercam", targets=2, layer="grid")

    def reshape(tokens):  # what pytorch-grad-cam users write by hand
        return tokens[:, 1:].reshape(len(tokens), 4, 4, -1).permute(0, 3, 1, 2)

    result = explain(Tiny("tokens"), x, "layercam", targets=2, layer="grid", reshape=reshape)
    torch.testing.assert_close(result.raw["grid"], reference.raw["grid"], rtol=1e-5, atol=1e-6)
    with pytest.raises(vistool.VistoolError, match="cannot invert"):
        explain(Tiny("tokens"), x, "ablationcam", targets=2, layer="grid", reshape=reshape)
    with pytest.raises(vistool.LayerError, match=r"into shape \(2, 17\); it must return"):
        explain(Tiny("tokens"), x, "gradcam", layer="grid", reshape=lambda t: t.sum(2))


@pytest.mark.parametrize(("name", "size"), [
    ("alexnet", 96), ("densenet121", 64), ("efficientnet_b0", 64), ("regnet_x_400mf", 64),
    ("convnext_tiny", 64), ("mobilenet_v3_small", 64), ("mnasnet0_5", 64),
    ("shufflenet_v2_x0_5", 64), ("squeezenet1_0", 64), ("googlenet", 64),
    ("inception_v3", 96), ("maxvit_t", 224), ("swin_t", 64),
])
def test_one_model_per_family_maps_its_grid_and_equals_captum(name, size):
    from captum.attr import LayerGradCam

    torch.manual_seed(0)
    loaded = vistool.load_model(name, weights="none", input_size=size, device="cpu")
    model, layer = loaded.model, loaded.default_layer
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    result = explain(loaded, x, "gradcam")
    with torch.no_grad(), vistool.record(model, [layer]) as rec:
        model(x)
    view = grid_view(layer, rec[layer], (size, size))
    ours = result.raw[layer]
    assert ours.shape == (1, *view.grid)
    module = model.get_submodule(layer)
    if view.layout != "nchw":
        parent, _, child = layer.rpartition(".")
        module = AsGrid(module, view)
        setattr(model.get_submodule(parent) if parent else model, child, module)
        module = module.grid
    theirs = LayerGradCam(model, module).attribute(x, target=result.targets,
                                                   relu_attributions=True)[:, 0].detach()
    assert ours.amax() > ours.amin()  # not a blank map, which would equal any other blank one
    assert (ours - theirs).abs().max() <= 1e-5 * float(theirs.abs().max())


@pytest.mark.parametrize("layout", ["nhwc", "tokens"])
def test_feature_visualisation_reads_channels_last_and_token_layers(layout):
    from vistool.synthesize.featureviz import render_filters
    from vistool.synthesize.transform import Transforms

    def render(kind):
        loaded = vistool.load_model(Tiny(kind), input_size=16, mean=[0.5] * 3, std=[0.25] * 3,
                                    device="cpu")
        return render_filters(loaded, "grid", [0, 5], size=16, steps=3,
                              transforms=Transforms.none())

    reference, result = render("nchw"), render(layout)
    torch.testing.assert_close(result.images, reference.images, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.activations, reference.activations)
