"""A book model's name never silently means random weights; every run says what its weights are."""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import vistool
from vistool.cli import main
from vistool.core.checkpoint import save_checkpoint
from vistool.core.errors import RandomWeightsWarning
from vistool.core.registry import get_model

CLASSES = ["circle", "square", "triangle"]


@pytest.fixture
def no_runs(tmp_path, monkeypatch):
    """An empty vistool cache and a working directory without runs/."""
    monkeypatch.setenv("VISTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _trained(path, seed=0):
    torch.manual_seed(seed)
    model = get_model("shapes_cnn", num_classes=3, width=4)
    save_checkpoint(path, model, {"arch": "shapes_cnn",
                                  "arch_kwargs": {"num_classes": 3, "width": 4},
                                  "classes": CLASSES, "input_size": [3, 32, 32]})
    return model


def test_book_model_without_trained_checkpoint_warns_that_weights_are_random(no_runs):
    with pytest.warns(RandomWeightsWarning, match=r"shapes_cnn has no trained checkpoint.*RANDOM"):
        loaded = vistool.load_model("shapes_cnn", device="cpu")
    assert loaded.random_weights is True
    assert "random" in loaded.weights and loaded.classes is None


def test_book_model_name_resolves_to_the_cached_trained_checkpoint(no_runs):
    model = _trained(no_runs / "cache" / "shapes-cnn-v3" / "best.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        loaded = vistool.load_model("shapes_cnn", device="cpu")
    assert loaded.random_weights is False and loaded.classes == CLASSES
    assert loaded.weights.startswith("trained checkpoint ") and "shapes-cnn-v3" in loaded.weights
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key


def test_the_newest_trained_checkpoint_wins_and_runs_count(no_runs):
    _trained(no_runs / "cache" / "shapes-cnn-v3" / "best.safetensors", seed=0)
    newer = _trained(no_runs / "runs" / "shapes" / "best.safetensors", seed=1)
    old = no_runs / "cache" / "shapes-cnn-v3" / "best.safetensors"
    os.utime(old, (1_000_000, 1_000_000))
    loaded = vistool.load_model("shapes_cnn", device="cpu")
    assert "runs" in loaded.weights
    first = next(iter(newer.state_dict()))
    assert torch.equal(loaded.model.state_dict()[first], newer.state_dict()[first])
    # A checkpoint of another architecture is never taken for this one.
    assert vistool.load_model("lenet", weights="none", device="cpu").random_weights is True


def test_weights_none_is_random_without_a_warning(no_runs):
    _trained(no_runs / "cache" / "shapes-cnn-v3" / "best.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error", RandomWeightsWarning)
        loaded = vistool.load_model("shapes_cnn", weights="none", device="cpu")
    assert loaded.random_weights is True and loaded.weights.endswith("(weights: none)")


def test_a_seed_builds_the_same_random_network_and_leaves_torchs_state(no_runs):
    def weights(seed):
        model = vistool.load_model("shapes_cnn", weights="none", device="cpu", seed=seed).model
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    torch.manual_seed(123)
    state = torch.get_rng_state()
    assert torch.equal(weights(3), weights(3))
    assert not torch.equal(weights(3), weights(4))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert not torch.equal(weights(None), weights(None))  # None: drawn from that stream


def test_cli_seed_seeds_weights_none(no_runs, capsys):
    """``vistool filters --weights none --seed 3`` twice draws the same random network, so
    the same images; another seed another network."""
    def images(seed, out):
        assert main(["filters", "--model", "shapes_cnn", "--weights", "none", "--layer",
                     "features.3", "--channels", "0-1", "--size", "32", "--steps", "2",
                     "--seed", str(seed), "--device", "cpu", "--out", str(out)]) == 0
        return np.load(out / "images.npy")

    first = images(3, no_runs / "a")
    assert np.array_equal(first, images(3, no_runs / "b"))
    assert not np.array_equal(first, images(4, no_runs / "c"))
    manifest = json.loads((no_runs / "a" / "manifest.json").read_text())
    assert manifest["seed"] == 3 and manifest["model"]["random_weights"] is True


def test_factory_without_checkpoint_says_its_weights_are_its_own(tmp_path):
    (tmp_path / "net.py").write_text("from torch import nn\n\ndef build():\n"
                                     "    return nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU())\n")
    with pytest.warns(RandomWeightsWarning, match=r"no `weights` file.*random unless"):
        loaded = vistool.load_model(f"{tmp_path}/net.py:build", device="cpu")
    assert loaded.random_weights is None


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "img.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_cli_says_random_weights_on_one_stderr_line_and_in_the_manifest(no_runs, image, capsys):
    status = main(["gradcam", "--model", "shapes_cnn", "--device", "cpu", str(image),
                   "--out", str(no_runs / "out")])
    _, err = capsys.readouterr()
    assert status == 0
    warning_lines = [line for line in err.splitlines() if line.startswith("vistool: warning:")]
    assert len(warning_lines) == 1 and "RANDOM" in warning_lines[0]
    assert "Traceback" not in err and "RandomWeightsWarning" not in err
    info = json.loads((no_runs / "out" / "manifest.json").read_text())
    assert info["model"]["random_weights"] is True
    assert "no trained checkpoint found" in info["model"]["weights"]


def test_cli_uses_the_trained_checkpoint_silently(no_runs, image, capsys):
    _trained(no_runs / "cache" / "shapes-cnn-v3" / "best.safetensors")
    status = main(["gradcam", "--model", "shapes_cnn", "--device", "cpu", str(image),
                   "--out", str(no_runs / "out")])
    _, err = capsys.readouterr()
    assert status == 0 and "warning" not in err
    info = json.loads((no_runs / "out" / "manifest.json").read_text())
    assert info["model"]["random_weights"] is False
    assert info["images"][0]["predictions"][0]["name"] in CLASSES


def test_loading_line_shows_in_a_terminal_only(no_runs, capsys, monkeypatch):
    main(["layers", "--model", "lenet", "--weights", "none"])
    assert "loading model" not in capsys.readouterr().err
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    main(["layers", "--model", "lenet", "--weights", "none"])
    assert "vistool: loading model lenet …" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["gradcam", "activations", "attribute"])
def test_out_naming_a_file_is_one_line_and_the_file_is_kept(no_runs, image, capsys, command):
    target = no_runs / "taken.txt"
    target.write_text("mine")
    status = main([command, "--model", "lenet", "--weights", "none", str(image),
                   "--out", str(target)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1
    assert err[0] == f"vistool: error: --out '{target}' is a file; give a new or empty directory"
    assert target.read_text() == "mine"


def test_random_weight_warnings_point_at_the_callers_line(no_runs):
    with pytest.warns(RandomWeightsWarning) as book:
        vistool.load_model("shapes_cnn", device="cpu")
    with pytest.warns(RandomWeightsWarning) as factory:
        vistool.load_model("torchvision.models:squeezenet1_1", device="cpu")
    assert {(w.filename, w.category) for w in [*book, *factory]} == {
        (__file__, RandomWeightsWarning)}
