"""Explanation quality on a model trained inside the test: the shapes CNN (trainers recipe).

Composite images hold two objects of different classes; each class's Grad-CAM map must
peak inside that class's own object. (A one-object pointing game would not do: any
saliency-like map finds the only object, even for a model at chance accuracy.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import vistool
from vistool.cli import main
from vistool.data.shapes import render_scene
from vistool.explainers.cam import explain


@pytest.fixture(scope="module")
def trained(trained_shapes):
    return trained_shapes


@pytest.fixture(scope="module")
def composites(trained):
    loaded = vistool.load_model(str(trained[0]), device="cpu")
    rng = np.random.default_rng(2024)
    scenes = [render_scene(rng, 64, rng.choice(5, size=2, replace=False).tolist())
              for _ in range(100)]
    x = torch.stack([loaded.transform(vistool.load_image(s.image)) for s in scenes])
    return loaded, scenes, x


def test_recipe_reaches_its_accuracy(trained):
    path, metrics = trained
    assert metrics["val_acc"] >= 0.98
    loaded = vistool.load_model(str(path), device="cpu")
    assert loaded.metadata["metrics"]["val_acc"] == metrics["val_acc"]
    assert loaded.classes == ["circle", "square", "triangle", "star", "cross"]


def _peak_in_box(maps: torch.Tensor, scenes, which: int) -> list[bool]:
    hits = []
    for scene, heat in zip(scenes, maps):
        y, x = np.unravel_index(int(heat.argmax()), tuple(heat.shape))
        x0, y0, x1, y1 = scene.boxes[which]
        hits.append(bool(x0 <= x < x1 and y0 <= y < y1))
    return hits


@pytest.mark.parametrize("method", ["gradcam", "cam"])
def test_class_discrimination_on_two_object_composites(composites, method):
    loaded, scenes, x = composites
    hits = []
    for which in (0, 1):
        targets = torch.tensor([s.labels[which] for s in scenes])
        result = explain(loaded, x, method, targets=targets)
        assert result.closed_form  # features -> GAP -> fc
        hits += _peak_in_box(result.maps, scenes, which)
    assert np.mean(hits) >= 0.85, np.mean(hits)


def test_faster_scorecam_correlates_with_exact(composites):
    loaded, _, x = composites
    exact = explain(loaded, x[:16], "scorecam")
    fast = explain(loaded, x[:16], "scorecam", channels=16)  # 16 of 64 channels
    corr = [np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1]
            for a, b in zip(exact.maps, fast.maps)]
    assert np.mean(corr) >= 0.95


def test_gradcam_cli_on_the_trained_checkpoint(trained, tmp_path, capsys):
    image = tmp_path / "star.png"
    from PIL import Image

    scene = render_scene(np.random.default_rng(1), 64, [3])
    Image.fromarray(scene.image).save(image)
    out = tmp_path / "out"
    status = main(["gradcam", "--model", str(trained[0]), "--out", str(out), "--json",
                   str(image)])
    assert status == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "manifest.json").read_text())
    assert printed == saved
    top = saved["images"][0]["predictions"]
    assert len(top) == 5
    assert top[0] == {"index": 3, "name": "star", "prob": top[0]["prob"]}
    assert top[0]["prob"] > 0.9
    explained = saved["images"][0]["explanations"][0]
    assert explained["target"] == 3
    assert explained["name"] == "star"
    heat = np.load(out / explained["raw"][0])
    assert heat.shape == (8, 8)
    assert (out / explained["overlay"]).is_file()
    assert (out / explained["heatmap"]).is_file()
    assert saved["method"] == "gradcam"
    assert saved["layer"] == ["features"]
