"""Model loading: torchvision weights through the hub cache, checkpoints, user factories."""

from __future__ import annotations

import argparse
import collections
import textwrap

import numpy as np
import pytest
import torch
import torchvision

import vistool
from trainers.models import get_model
from vistool import CheckpointError, ModelError, TargetError, WeightsError, load_model
from vistool.core.checkpoint import load_checkpoint, save_checkpoint
from vistool.core.zoo import parse_input_size


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """An empty TORCH_HOME and every HTTP(S) request sent to a closed local port."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return tmp_path / "torch-home"


def test_default_weights_come_from_the_torch_hub_cache(offline):
    weights = torchvision.models.ResNet18_Weights.DEFAULT
    reference = torchvision.models.resnet18(weights=None)
    cached = offline / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), cached)

    loaded = load_model("resnet18", weights="default", device="cpu")
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    assert not loaded.model.training
    assert loaded.classes == weights.meta["categories"] and len(loaded.classes) == 1000
    assert loaded.input_size == (3, 224, 224)
    assert loaded.mean == pytest.approx((0.485, 0.456, 0.406))
    assert loaded.default_layer == "layer4"


def test_missing_default_weights_name_the_file_and_the_alternatives(offline, capsys):
    with pytest.raises(WeightsError) as info:
        load_model("resnet18", weights="default", device="cpu")
    printed = capsys.readouterr()
    assert "Downloading" not in printed.out + printed.err  # the error is the only line
    message = str(info.value)
    expected = offline / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    assert str(expected) in message
    assert "`weights='none'`" in message and "`weights=FILE`" in message


def test_weights_none_and_a_state_dict_file(tmp_path):
    reference = torchvision.models.alexnet(weights=None)
    path = tmp_path / "alex.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()},
                "epoch": 7}, path)
    loaded = load_model("alexnet", weights=str(path), device="cpu")
    assert torch.equal(loaded.model.features[0].weight, reference.features[0].weight)
    random_init = load_model("alexnet", weights="none", device="cpu")
    assert not torch.equal(random_init.model.features[0].weight, reference.features[0].weight)


@pytest.mark.parametrize("wrap", ["plain", "module", "state_dict", "model", "nested", "compiled"])
def test_checkpoint_wrappers_are_understood(tmp_path, tiny_net, wrap):
    sd = tiny_net.state_dict()
    obj = {
        "plain": sd,
        "module": collections.OrderedDict((f"module.{k}", v) for k, v in sd.items()),
        "state_dict": {"state_dict": sd, "epoch": 3, "arch": "tiny"},
        "model": {"model": sd, "optimizer": {"lr": 0.1}},
        "nested": {"checkpoint_info": {"model": {"module.": 1}},
                   "model": {f"module.{k}": v for k, v in sd.items()}},
        "compiled": {f"_orig_mod.{k}": v for k, v in sd.items()},
    }[wrap]
    path = tmp_path / "ckpt.pt"
    torch.save(obj, path)
    state, meta = load_checkpoint(path)
    assert set(state) == set(sd)
    assert all(torch.equal(state[k], sd[k]) for k in sd)
    if wrap == "state_dict":
        assert meta == {"epoch": 3, "arch": "tiny"}


def test_mismatch_report_lists_missing_unexpected_and_shapes(tmp_path):
    model = get_model("shapes_cnn", num_classes=5)
    sd = model.state_dict()
    sd.pop("fc.bias")
    sd["head.weight"] = torch.zeros(2)
    sd["fc.weight"] = torch.zeros(3, 64)
    path = tmp_path / "bad.safetensors"
    save_checkpoint(path, sd, {"arch": "shapes_cnn", "arch_kwargs": {"num_classes": 5}})
    with pytest.raises(CheckpointError) as info:
        load_model(str(path), device="cpu")
    message = str(info.value)
    assert "\n" not in message
    assert "1 missing keys (fc.bias)" in message
    assert "1 unexpected keys (head.weight)" in message
    assert "1 shape mismatches (fc.weight [3, 64] vs model [5, 64])" in message


def test_trainers_checkpoint_is_self_describing(tmp_path):
    model = get_model("shapes_cnn", num_classes=3, width=8)
    path = tmp_path / "best.safetensors"
    save_checkpoint(path, model, {"arch": "shapes_cnn",
                                  "arch_kwargs": {"num_classes": 3, "width": 8},
                                  "classes": ["a", "b", "c"], "input_size": [3, 32, 32],
                                  "mean": [0.5] * 3, "std": [0.25] * 3})
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind
    loaded = load_model(str(path), device="cpu")
    assert loaded.classes == ["a", "b", "c"]
    assert loaded.input_size == (3, 32, 32)
    assert loaded.default_layer == "features"
    assert torch.equal(loaded.model.fc.weight, model.fc.weight)
    assert loaded.class_index("b") == 1
    with pytest.raises(TargetError, match=r"out of range.*0\.\.2"):
        loaded.class_index(3)
    with pytest.raises(TargetError, match="unknown class 'd'"):
        loaded.class_index("d")


def test_checkpoint_without_arch_and_corrupt_files(tmp_path, tiny_net):
    bare = tmp_path / "bare.safetensors"
    save_checkpoint(bare, tiny_net)
    with pytest.raises(CheckpointError, match="does not say which architecture"):
        load_model(str(bare), device="cpu")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(str(corrupt), device="cpu")
    pickled = tmp_path / "evil.pt"
    torch.save({"model": argparse.Namespace(a=1)}, pickled)  # refused by weights_only
    with pytest.raises(CheckpointError, match="could not be loaded safely"):
        load_checkpoint(pickled)


FACTORY = """
import torch
from torch import nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))

def build():
    return Net()

def broken():
    raise RuntimeError("no GPU here")

def not_a_model():
    return 42
"""


def test_user_factory_with_checkpoint_and_input_spec(tmp_path):
    source = tmp_path / "mynet.py"
    source.write_text(textwrap.dedent(FACTORY))
    first = load_model(f"{source}:build", weights="default", device="cpu", input_size="1,28,28")
    ckpt = tmp_path / "weights.pt"
    torch.save({"model": first.model.state_dict()}, ckpt)
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\n")
    loaded = load_model(f"{source}:build", weights=str(ckpt), device="cpu", input_size=28,
                        mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2], classes=str(classes))
    assert torch.equal(loaded.model.head.weight, first.model.head.weight)
    assert first.input_size == (1, 28, 28) and first.mean == (0.5,)
    assert loaded.classes == ["cat", "dog"] and loaded.input_size == (3, 28, 28)

    with pytest.raises(ModelError, match="raised RuntimeError: no GPU here"):
        load_model(f"{source}:broken", device="cpu")
    with pytest.raises(ModelError, match="returned a int"):
        load_model(f"{source}:not_a_model", device="cpu")
    with pytest.raises(ModelError, match="has no callable 'buld'; did you mean 'build'"):
        load_model(f"{source}:buld", device="cpu")
    with pytest.raises(ModelError, match="does not exist"):
        load_model(f"{tmp_path / 'nope.py'}:build", device="cpu")


def test_module_factory_and_unknown_names():
    loaded = load_model("torchvision.models:squeezenet1_1", device="cpu")
    assert loaded.input_size == (3, 224, 224)
    with pytest.raises(ModelError, match="did you mean 'resnet18'"):
        load_model("resnet81", device="cpu")
    with pytest.raises(ModelError, match="cannot import module"):
        load_model("no_such_pkg.models:build", device="cpu")
    with pytest.raises(ModelError, match="unknown device 'gpu'"):
        load_model("shapes_cnn", device="gpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda():
    with pytest.raises(ModelError, match="CUDA is not available; use `device='cpu'`"):
        load_model("shapes_cnn", device="cuda")


def test_parse_input_size():
    assert parse_input_size(32) == (3, 32, 32)
    assert parse_input_size("1,28,28") == (1, 28, 28)
    assert parse_input_size("64x48") == (3, 64, 48)
    with pytest.raises(ModelError, match="not valid"):
        parse_input_size("a,b")


def test_an_input_size_of_ones_own_keeps_torchvisions_margin():
    """resnet18 resizes to 256 and crops 224; asked for 64 it resizes to 73 (= 256 * 64 /
    224) and crops 64, not to 256 and a 64-pixel crop of the centre; a segmentation
    model (resized to 520, no crop) keeps every pixel of an image of its size."""
    from PIL import Image

    ramp = np.tile(np.linspace(0, 255, 146).astype(np.uint8), (146, 1))
    picture = Image.fromarray(np.stack([ramp] * 3, -1))
    loaded = vistool.load_model("resnet18", weights="none", device="cpu", input_size=64)
    x = vistool.deprocess(loaded.transform(picture)[None], loaded.mean, loaded.std)[0, 0]
    assert x.shape == (64, 64) and 0.05 < float(x[0, 0]) < 0.1 and 0.9 < float(x[0, -1]) < 0.95
    square = Image.fromarray(np.stack([ramp[:64, :64]] * 3, -1))
    seg = vistool.load_model("lraspp_mobilenet_v3_large", weights="none", device="cpu",
                             input_size=64)
    y = vistool.deprocess(seg.transform(square)[None], seg.mean, seg.std)[0, 0]
    np.testing.assert_allclose(y.numpy() * 255, ramp[:64, :64], atol=1.0)
