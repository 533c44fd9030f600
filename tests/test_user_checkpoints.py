"""Users' own checkpoints load as torch loads them, and are refused in one line when torch would
refuse them or when they hold more than tensors."""

from __future__ import annotations

import copy
import json
import os
import pickle
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vistool import apply_state_dict, load_checkpoint, load_model
from vistool.cli import main
from vistool.core.errors import CheckpointError

# The CIFAR-10 ResNet of He et al. (2016), section 4.2: a 3x3 stem, three stages of n basic
# blocks at 16/32/64 channels, parameter-free "option A" shortcuts, global pooling, one linear
# layer. n=3 is ResNet20 (19 BatchNorm layers), laid out as the popular CIFAR ports name it.
RESNET = """
import torch.nn.functional as F
from torch import nn


class PadShortcut(nn.Module):
    def __init__(self, planes):
        super().__init__()
        self.pad = planes // 4

    def forward(self, x):
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))


class BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = PadShortcut(planes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.in_planes = 16
        self.layer1 = self._stage(16, blocks, 1)
        self.layer2 = self._stage(32, blocks, 2)
        self.layer3 = self._stage(64, blocks, 2)
        self.linear = nn.Linear(64, num_classes)

    def _stage(self, planes, blocks, stride):
        layers = []
        for s in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet20():
    return ResNet(3)
"""

CIFAR_MEAN, CIFAR_STD = "0.4914,0.4822,0.4465", "0.2470,0.2435,0.2616"
CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                 "ship", "truck"]


def _trained_like(model: nn.Module) -> nn.Module:
    """Seeded weights and BatchNorm statistics that differ from any fresh initialisation."""
    generator = torch.Generator().manual_seed(20)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(64000)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
            else:
                tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.2)
    return model


@pytest.fixture
def cifar(tmp_path):
    """(spec, trained reference model, its saved state without num_batches_tracked)."""
    (tmp_path / "resnet.py").write_text(RESNET)
    spec = f"{tmp_path}/resnet.py:resnet20"
    reference = _trained_like(load_model(spec, weights="none", device="cpu").model)
    state = {k: v.clone() for k, v in reference.state_dict().items()
             if not k.endswith("num_batches_tracked")}
    return spec, reference, state


def _save_old_style(path, state, legacy: bool = False) -> None:
    """What a DataParallel training script saved with torch < 0.4.1: 'module.' keys, no
    num_batches_tracked, a {'state_dict': ...} wrapper with the best accuracy beside it."""
    wrapped = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "best_prec1": 91.73}
    torch.save(wrapped, path, _use_new_zipfile_serialization=not legacy)


def _run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _one_line_error(status: int, err: str) -> str:
    assert status == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("vistool: error: ")
    return lines[0]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_old_dataparallel_batchnorm_checkpoint_loads_as_in_torch(tmp_path, cifar, legacy):
    spec, reference, state = cifar
    assert len(reference.state_dict()) - len(state) == 19  # the 19 keys the issue reported
    path = tmp_path / "resnet20.th"
    _save_old_style(path, state, legacy)
    fresh = load_model(spec, weights="none", device="cpu").model
    fresh.load_state_dict(state, strict=True)  # torch accepts it: BatchNorm fills the count in
    loaded, meta = load_checkpoint(path)
    assert meta == {"best_prec1": 91.73}
    assert set(loaded) == set(state)

    model = load_model(spec, weights=str(path), input_size=32, device="cpu")
    own = model.model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items())
    assert own["layer3.2.bn2.num_batches_tracked"].item() == 0  # the model's own, as torch
    assert model.input_size == (3, 32, 32)
    assert model.weights == f"weights file {path}"


def test_cli_layers_and_gradcam_accept_the_checkpoint(capsys, tmp_path, cifar):
    spec, reference, state = cifar
    ckpt = tmp_path / "resnet20.th"
    _save_old_style(ckpt, state)
    status, out, err = _run(capsys, "layers", "--model", spec, "--checkpoint", ckpt,
                            "--input-size", "32")
    assert (status, err) == (0, "")
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    assert rows["layer3.2.bn2"] == ["layer3.2.bn2", "BatchNorm2d", "1x64x8x8", "128"]
    assert rows["linear"] == ["linear", "Linear", "1x10", "650"]
    assert "60 layers, 269,722 parameters, input 3x32x32, default target layer: layer3" in out

    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CIFAR_CLASSES) + "\n")
    image = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(image)
    out_dir = tmp_path / "cam"
    status, _, err = _run(capsys, "gradcam", "--model", spec, "--checkpoint", ckpt,
                          "--input-size", "32", "--mean", CIFAR_MEAN, "--std", CIFAR_STD,
                          "--classes", classes, image, "--out", out_dir)
    assert (status, err) == (0, "")
    meta = json.loads((out_dir / "manifest.json").read_text())
    entry = meta["images"][0]
    explained = entry["explanations"][0]
    for key in ("overlay", "heatmap"):
        assert (out_dir / explained[key]).is_file()
    assert np.load(out_dir / explained["raw"][0]).shape == (8, 8)  # layer3 of a 32x32 input
    # the predictions are the reference model's: the checkpoint's weights were used
    loaded = load_model(reference.eval(), input_size=32, device="cpu",
                        mean=[float(m) for m in CIFAR_MEAN.split(",")],
                        std=[float(s) for s in CIFAR_STD.split(",")])
    with torch.no_grad():
        probs = loaded.model(loaded.preprocess(image)).softmax(1)[0]
    top = entry["predictions"][0]
    assert top["index"] == int(probs.argmax())
    assert top["name"] == CIFAR_CLASSES[top["index"]]
    assert top["prob"] == pytest.approx(float(probs.max()), abs=1e-5)


def test_checkpoint_of_a_modern_state_dict_keeps_torch_version_record(tmp_path, cifar):
    spec, reference, _ = cifar
    state = reference.state_dict()  # an OrderedDict whose _metadata says BatchNorm version 2
    for key in [k for k in state if k.endswith("num_batches_tracked")]:
        del state[key]
    with pytest.raises(RuntimeError, match="Missing key"):
        copy.deepcopy(reference).load_state_dict(state, strict=True)  # torch refuses this one
    path = tmp_path / "modern.pt"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_model(spec, weights=str(path), input_size=32, device="cpu")
    assert "19 missing keys (bn1.num_batches_tracked, layer1.0.bn1.num_batches_tracked, " in (
        str(info.value))


def test_mismatched_checkpoint_is_one_line_and_leaves_the_model_unchanged(capsys, tmp_path,
                                                                          cifar):
    spec, _, state = cifar
    bad = dict(state)
    del bad["conv1.weight"]
    bad["extra.weight"] = torch.zeros(3)
    bad["linear.weight"] = torch.zeros(5, 64)
    path = tmp_path / "bad.th"
    _save_old_style(path, bad)
    expected = ("1 missing keys (conv1.weight); 1 unexpected keys (extra.weight); "
                "1 shape mismatches (linear.weight [5, 64] vs model [10, 64]); check that the "
                "model and the weights belong together")

    model = load_model(spec, weights="none", device="cpu").model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch_copy = copy.deepcopy(model)
    with pytest.raises(RuntimeError):
        torch_copy.load_state_dict(load_checkpoint(path)[0], strict=True)
    assert not torch.equal(torch_copy.layer1[0].conv1.weight, before["layer1.0.conv1.weight"])

    with pytest.raises(CheckpointError) as info:
        load_model(model, weights=str(path), device="cpu")
    assert str(info.value) == f"weights {str(path)!r} does not match ResNet: {expected}"
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(CheckpointError):
        apply_state_dict(model, load_checkpoint(path)[0])
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())

    status, _, err = _run(capsys, "layers", "--model", spec, "--checkpoint", path,
                          "--input-size", "32")
    assert _one_line_error(status, err).endswith(expected)


def test_prefixed_models_and_torch_leniencies(tmp_path, cifar):
    spec, reference, state = cifar
    path = tmp_path / "resnet20.th"
    _save_old_style(path, state)
    wrapped = nn.DataParallel(load_model(spec, weights="none", device="cpu").model)
    load_model(wrapped, weights=str(path), device="cpu", input_size=32)  # keys 'module.…'
    assert torch.equal(wrapped.module.linear.weight, reference.linear.weight)

    class Scaled(nn.Module):  # a 0-d parameter and extra state, both of which torch accepts
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(torch.tensor(1.0))
            self.note = ""

        def get_extra_state(self):
            return {"note": self.note}

        def set_extra_state(self, extra):
            self.note = extra["note"]

    scaled = tmp_path / "scaled.pt"
    torch.save({"state_dict": {"scale": torch.tensor([3.0]), "_extra_state": {"note": "v2"}}},
               scaled)
    model = Scaled()
    apply_state_dict(model, load_checkpoint(scaled)[0])
    assert (model.scale.item(), model.note) == (3.0, "v2")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-format"])
def test_whole_pickled_model_is_refused_with_one_line(capsys, tmp_path, cifar, legacy):
    spec, reference, _ = cifar
    path = tmp_path / "whole.pt"
    torch.save(reference, path, _use_new_zipfile_serialization=not legacy)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
    assert caught == []
    assert str(info.value) == (
        f"checkpoint {str(path)!r} holds a whole pickled model (torch.save(model)), which could "
        "not be loaded safely, so it was not loaded; save the weights instead with "
        "torch.save(model.state_dict(), path) or use .safetensors")
    status, _, err = _run(capsys, "layers", "--model", spec, "--checkpoint", path)
    assert "holds a whole pickled model" in _one_line_error(status, err)


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_is_refused_and_never_run(capsys, tmp_path, cifar, writer):
    spec = cifar[0]
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "x": _Exploit(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload, protocol=4))
        with (pytest.warns(UserWarning, match="pickle protocol 4"),
              pytest.raises(pickle.UnpicklingError)):
            torch.load(path, weights_only=True)  # torch itself warns before refusing
    else:
        torch.save(payload, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
    assert caught == []
    assert str(info.value) == (
        f"checkpoint {str(path)!r} holds objects other than tensors and plain containers "
        f"({os.system.__module__}.system), which could not be loaded safely, so it was not "
        "loaded; save model.state_dict() with torch.save or use .safetensors")
    status, _, err = _run(capsys, "layers", "--model", spec, "--checkpoint", path)
    assert "objects other than tensors" in _one_line_error(status, err)
    assert not marker.exists()


def test_damaged_file_is_named_in_one_whole_sentence(tmp_path):
    path = tmp_path / "cut.pt"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == (
        f"checkpoint {str(path)!r} is not a checkpoint torch.save wrote, or it is damaged "
        "(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central "
        "directory.); save a state dict with torch.save(model.state_dict(), path) or use "
        ".safetensors")
