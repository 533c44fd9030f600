"""timm models (``--model timm:NAME``): their data config sets the input, their layouts and
default layers are found, Grad-CAM equals captum's, and the bad requests (an unknown name,
timm missing, pretrained weights offline) are one line. timm is installed by ``make test``
(the dev extra); in a checkout without it these tests fail under CI and skip elsewhere."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import require_peer

import vistool
from vistool import ModelError, WeightsError
from vistool.cli import main


@pytest.fixture(scope="module")
def timm():
    return require_peer("timm")


def test_the_data_config_sets_size_normalisation_resize_and_classes(timm):
    loaded = vistool.load_model("timm:resnet18", weights="none", device="cpu", seed=0)
    config = timm.data.resolve_data_config({}, model=loaded.model)
    assert loaded.input_size == config["input_size"] == (3, 224, 224)
    assert loaded.mean == pytest.approx(config["mean"]) and loaded.std == pytest.approx(
        config["std"])
    assert loaded.classes[281] == "tabby" and len(loaded.classes) == 1000
    assert loaded.random_weights and loaded.weights.startswith("random")
    assert loaded.spec == "timm:resnet18" and loaded.default_layer == "layer4"
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 472).astype(np.uint8), (472, 1))  # resized to 236
    x = vistool.deprocess(loaded.transform(Image.fromarray(np.stack([ramp] * 3, -1)))[None],
                          loaded.mean, loaded.std)[0, 0]
    assert x.shape == (224, 224) and float(x[0, 0]) == pytest.approx(6 / 236, abs=0.01)
    assert "timm:convnext_atto" in vistool.list_models()["timm"]


def test_gradcam_equals_captum_on_a_timm_network(timm):
    from captum.attr import LayerGradCam

    loaded = vistool.load_model("timm:resnet18", weights="none", device="cpu", seed=0,
                                input_size=96)
    x = torch.randn(2, 3, 96, 96, generator=torch.Generator().manual_seed(1))
    ours = vistool.explain(loaded, x, "gradcam", layer="layer3")
    theirs = LayerGradCam(loaded.model, loaded.model.layer3).attribute(
        x, target=ours.targets, relu_attributions=True)[:, 0].detach()
    assert theirs.amax() > 0
    torch.testing.assert_close(ours.raw["layer3"], theirs, rtol=0,
                               atol=1e-5 * float(theirs.abs().max()))


@pytest.mark.parametrize(("name", "layer", "layout"), [
    ("vit_tiny_patch16_224", "blocks.11.norm1", "tokens"),
    ("convnext_atto", "stages", "nchw"),
])
def test_layouts_and_default_layers_of_timm_families(timm, name, layer, layout):
    loaded = vistool.load_model(f"timm:{name}", weights="none", device="cpu", seed=0)
    assert loaded.default_layer == layer
    x = torch.randn(1, *loaded.input_size, generator=torch.Generator().manual_seed(1))
    result = vistool.explain(loaded, x, "gradcam")
    raw = result.raw[layer]
    assert raw.shape[-2:] == (7, 7) if layout == "nchw" else raw.shape[-2:] == (14, 14)
    assert raw.amax() > raw.amin()
    with torch.no_grad(), vistool.record(loaded.model, layer) as rec:
        loaded.model(x)
    from vistool.core.layout import grid_view

    assert grid_view(layer, rec[layer], x.shape[2:]).layout == layout


def test_bad_timm_requests_are_one_line(timm, monkeypatch, tmp_path):
    with pytest.raises(ModelError, match="unknown timm model 'resnet1'; did you mean"):
        vistool.load_model("timm:resnet1", weights="none")
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # (no retries)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsError, match=r"pretrained weights for timm:resnet18 are not "
                                           r"cached.*`weights='none'`"):
        vistool.load_model("timm:resnet18")
    monkeypatch.setitem(sys.modules, "timm", None)  # as if not installed
    with pytest.raises(ModelError, match=r"pip install 'vistool\[timm\]'"):
        vistool.load_model("timm:resnet18", weights="none")


def test_gradcam_cli_on_a_timm_model(timm, tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (64, 64), (200, 40, 40)).save(tmp_path / "red.png")
    out = tmp_path / "out"
    assert main(["gradcam", "--model", "timm:resnet18", "--weights", "none", "--input-size",
                 "64", "--device", "cpu", str(tmp_path / "red.png"), "--out", str(out)]) == 0
    info = json.loads((out / "manifest.json").read_text())
    assert info["model"]["spec"] == "timm:resnet18" and info["model"]["random_weights"]
    assert main(["gradcam", "--model", "timm:resnt18", "--weights", "none",
                 str(tmp_path / "red.png"), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("vistool: error: unknown timm model 'resnt18'")
