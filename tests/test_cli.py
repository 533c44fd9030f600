"""The command line: layer tables, activation outputs, and one-line errors with status 2."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import save_tiny_shapes_checkpoint
from PIL import Image

from trainers.models import get_model
from vistool import activations, attribute, load_image, load_model
from vistool.cli import main


@pytest.fixture
def shapes_ckpt(tmp_path):
    return save_tiny_shapes_checkpoint(tmp_path / "model" / "best.safetensors")


@pytest.fixture
def images(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("one.png", "two.jpg"):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / name)
    return folder


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_layers_json(capsys):
    status, out, _ = run(capsys, "layers", "--model", "resnet18", "--weights", "none", "--json",
                         "--device", "cpu")
    assert status == 0
    rows = json.loads(out)
    fc = next(r for r in rows if r["name"] == "fc")
    assert fc == {"name": "fc", "type": "Linear", "output_shape": [1, 1000], "params": 513000,
                  "calls": 1}
    assert rows[0]["name"] == "conv1" and len(rows) == 67


def test_models_lists_torchvision_and_book_models(capsys):
    status, out, _ = run(capsys, "models", "--json")
    assert status == 0
    groups = json.loads(out)
    assert {"resnet18", "vgg16", "googlenet"} <= set(groups["torchvision"])
    assert "shapes_cnn" in groups["book"]


def test_layers_table_text(capsys, shapes_ckpt):
    status, out, _ = run(capsys, "layers", "--model", shapes_ckpt)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["name", "type", "output", "shape", "params"]
    assert any(line.split()[:3] == ["features.0", "Conv2d", "1x4x32x32"] for line in lines)
    assert "input 3x32x32, default target layer: features" in out


def test_activations_writes_grids_arrays_and_manifest(capsys, tmp_path, shapes_ckpt, images):
    out_dir = tmp_path / "out"
    status, out, err = run(capsys, "activations", "--model", shapes_ckpt, "--layer",
                           "features.3", "--layer", "features", "--channels", "0-2,3",
                           "--out", out_dir, images / "one.png", images / "two.jpg")
    assert status == 0, err
    assert f"wrote 4 activation grids to {out_dir}" in out
    names = sorted(p.name for p in out_dir.iterdir())
    assert names == sorted(["manifest.json"] + [
        f"{stem}_{layer}.{ext}" for stem in ("000-one", "001-two")
        for layer in ("features.3", "features") for ext in ("png", "npy")])
    meta = json.loads((out_dir / "manifest.json").read_text())
    assert meta["kind"] == "activations" and meta["options"]["layers"] == ["features.3",
                                                                         "features"]
    assert meta["versions"]["torch"] == torch.__version__
    entry = meta["outputs"][0]
    assert entry["shape"] == [4, 16, 16]
    saved = np.load(out_dir / "000-one_features.3.npy")
    loaded = load_model(str(shapes_ckpt), device="cpu")
    expected = activations(loaded, loaded.preprocess(images / "one.png"), "features.3")
    np.testing.assert_allclose(saved, expected.layers["features.3"][0].numpy(), atol=1e-5)
    assert entry["channel_stats"]["max"] == pytest.approx(saved.reshape(4, -1).max(1).tolist())
    grid = np.asarray(Image.open(out_dir / "000-one_features.3.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3


def _assert_one_line_error(status, err, *fragments):
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vistool: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.mark.parametrize(
    ("extra", "fragments"),
    [
        (["--layer", "features.33"], ["no layer named 'features.33'", "did you mean"]),
        (["--channels", "0-99"], ["has 16 channels", "--channels must be within 0-15"]),
        (["--model", "resnet81"], ["unknown model 'resnet81'", "resnet18"]),
    ],
    ids=["layer", "channels", "model"],
)
def test_bad_options_fail_cleanly(capsys, tmp_path, shapes_ckpt, images, extra, fragments):
    out_dir = tmp_path / "out"
    argv = ["activations", "--model", shapes_ckpt, "--out", out_dir, images, *extra]
    status, _, err = run(capsys, *argv)
    _assert_one_line_error(status, err, *fragments)
    assert not out_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_colormaps_accepted_without_matplotlib_are_matplotlib_colormaps():
    from matplotlib import colormaps

    from vistool.cli.options import _BUILTIN_COLORMAPS, colormap

    assert all(name in colormaps and colormap(name) == name for name in _BUILTIN_COLORMAPS)
    assert colormap("twilight") == "twilight"  # any other matplotlib colormap too
    with pytest.raises(argparse.ArgumentTypeError, match=r"unknown colormap 'viridiss'.*viridis"):
        colormap("viridiss")


def test_bad_images_fail_before_writing(capsys, tmp_path, shapes_ckpt, images):
    (images / "three.png").write_bytes(b"not a png")
    out_dir = tmp_path / "out"
    status, _, err = run(capsys, "activations", "--model", shapes_ckpt, "--out", out_dir,
                         *sorted(images.iterdir()))  # named files: one bad file ends the run
    _assert_one_line_error(status, err, "three.png", "not an image")
    assert not out_dir.exists()
    status, _, err = run(capsys, "activations", "--model", shapes_ckpt, tmp_path / "gone.jpg")
    _assert_one_line_error(status, err, "gone.jpg", "does not exist")


def test_mismatched_checkpoint_and_existing_output(capsys, tmp_path, shapes_ckpt, images):
    other = tmp_path / "other.pt"
    torch.save(get_model("shapes_cnn", num_classes=7).state_dict(), other)
    status, _, err = run(capsys, "layers", "--model", "shapes_cnn", "--weights", other)
    _assert_one_line_error(status, err, "shape mismatches", "fc.weight [7, 64] vs model [5, 64]")
    out_dir = tmp_path / "taken"
    out_dir.mkdir()
    (out_dir / "keep.txt").write_text("mine")
    status, _, err = run(capsys, "activations", "--model", shapes_ckpt, "--out", out_dir, images)
    _assert_one_line_error(status, err, "already exists and is not empty")
    assert [p.name for p in out_dir.iterdir()] == ["keep.txt"]


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "vistool", "activations", "--help"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0
    for option in ("--model", "--weights", "--checkpoint", "--layer", "--channels",
                   "--normalization", "--colormap", "--out", "--input-size", "--classes"):
        assert option in proc.stdout


def test_gradcam_topk_and_target_by_name(capsys, tmp_path, shapes_ckpt, images):
    out_dir = tmp_path / "cam"
    status, _, err = run(capsys, "gradcam", "--model", shapes_ckpt, "--topk", "2",
                           "--method", "gradcam++", "--out", out_dir, images / "one.png")
    assert status == 0, err
    meta = json.loads((out_dir / "manifest.json").read_text())
    explained = meta["images"][0]["explanations"]
    assert [e["target"] for e in explained] == [p["index"] for p in
                                                meta["images"][0]["predictions"][:2]]
    assert np.load(out_dir / explained[1]["raw"][0]).shape == (4, 4)
    overlay = np.asarray(Image.open(out_dir / explained[0]["overlay"]))
    assert overlay.shape == (224, 224, 3)  # the 32x32 input view, enlarged 7x
    status, _, err = run(capsys, "gradcam", "--model", shapes_ckpt, "--target", "b",
                         "--layer", "features.3", "--layer", "features", "--out",
                         tmp_path / "named", images / "one.png")
    assert status == 0, err
    meta = json.loads((tmp_path / "named" / "manifest.json").read_text())
    entry = meta["images"][0]["explanations"][0]
    assert (entry["target"], entry["name"]) == (1, "b")
    assert len(entry["raw"]) == 2


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["gradcam", "--target", "7"], ["class index 7 is out of range", "(0..2)"]),
        (["gradcam", "--target", "zebra"], ["unknown class 'zebra'"]),
        (["attribute", "--method", "ig", "--target", "3"], ["class index 3 is out of range"]),
    ],
    ids=["index", "name", "attribute"],
)
def test_explain_commands_reject_bad_targets(capsys, tmp_path, shapes_ckpt, images, argv,
                                             fragments):
    out_dir = tmp_path / "out"
    status, _, err = run(capsys, *argv, "--model", shapes_ckpt, "--out", out_dir, images)
    _assert_one_line_error(status, err, *fragments)
    assert not out_dir.exists()


def test_attribute_writes_raw_input_attributions(capsys, tmp_path, shapes_ckpt, images):
    out_dir = tmp_path / "attr"
    status, _, err = run(capsys, "attribute", "--model", shapes_ckpt, "--method", "saliency",
                         "--smooth", "2", "--seed", "3", "--out", out_dir,
                         images / "one.png", images / "two.jpg")
    assert status == 0, err
    meta = json.loads((out_dir / "manifest.json").read_text())
    assert meta["seed"] == 3
    assert meta["options"]["smooth"] == 2
    assert len(meta["outputs"]) == 2
    assert np.load(out_dir / meta["outputs"][0]["raw"][0]).shape == (3, 32, 32)
    # the saved values are the library's for the same images, options and seed
    loaded = load_model(str(shapes_ckpt), device="cpu")
    x = torch.stack([loaded.transform(load_image(images / name))
                     for name in ("one.png", "two.jpg")])
    expected = attribute(loaded, x, "saliency", smooth=2, seed=3)
    assert expected.raw.abs().amax((1, 2, 3)).min() > 0  # not blank
    for i, saved in enumerate(meta["outputs"]):
        assert saved["target"] == int(expected.targets[i])
        np.testing.assert_allclose(np.load(out_dir / saved["raw"][0]), expected.raw[i].numpy(),
                                   rtol=1e-5, atol=1e-7)
