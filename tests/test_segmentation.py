"""Semantic segmentation: torchvision's segmentation models load (their dict output, their
default layer), :class:`vistool.SegmentationTarget` scores a class over a region as
pytorch-grad-cam's ``SemanticSegmentationTarget`` does, and the gradient CAM methods on
fcn_resnet50 (random weights, small inputs) equal pytorch-grad-cam's with that target
within 1e-5 of the peak."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import require_peer

import vistool
from vistool import SegmentationTarget, TargetError
from vistool.explainers.targets import main_output


def test_the_target_sums_the_class_score_over_its_region():
    scores = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    box = SegmentationTarget(1, (1, 2, 3, 4))  # x 1..2, y 2..3
    assert box(scores).tolist() == [float(scores[i, 1, 2:4, 1:3].sum()) for i in range(2)]
    mask = torch.zeros(2, 4, 5, dtype=torch.bool)
    mask[0, 0, 0] = mask[1, 3, 4] = True
    assert SegmentationTarget(2, mask)({"out": scores, "aux": scores * 0}).tolist() == [
        float(scores[0, 2, 0, 0]), float(scores[1, 2, 3, 4])]
    predicted = SegmentationTarget.predicted(scores.flip(1), 0)  # class 0 wins everywhere
    assert bool(predicted.mask.all()) and predicted(scores.flip(1)).tolist() == [
        float(scores[i, 2].sum()) for i in range(2)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda: SegmentationTarget(0, (3, 0, 1, 2)), "not a box x0,y0,x1,y1"),
    (lambda: SegmentationTarget(0, (0, 0, 9, 2))(torch.zeros(1, 2, 4, 5)), "reaches outside"),
    (lambda: SegmentationTarget(0, torch.ones(3, 3))(torch.zeros(1, 2, 4, 5)), "the mask has"),
    (lambda: SegmentationTarget(5, (0, 0, 1, 1))(torch.zeros(1, 2, 4, 5)), "out of range"),
    (lambda: SegmentationTarget(0, (0, 0, 1, 1))(torch.zeros(1, 2)), "per-pixel scores"),
    (lambda: main_output([1]), "not a tensor or a dict"),
])
def test_bad_segmentation_requests_are_one_line(make, message):
    with pytest.raises(TargetError, match=message):
        make()


@pytest.fixture(scope="module")
def fcn():
    loaded = vistool.load_model("fcn_resnet50", weights="none", device="cpu", seed=0)
    x = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = loaded.model(x)
    category = int(out["out"].argmax(1).flatten().mode().values)  # the most predicted class
    return loaded, x, out, category


def test_segmentation_models_load_with_their_task_classes_and_layer(fcn):
    loaded, _, out, _ = fcn
    assert loaded.task == "segmentation" and loaded.describe()["task"] == "segmentation"
    assert loaded.classes[:2] == ["__background__", "aeroplane"] and len(loaded.classes) == 21
    assert loaded.default_layer == "backbone.layer4" and loaded.random_weights
    assert out["out"].shape == (2, 21, 64, 80)
    assert "deeplabv3_mobilenet_v3_large" in vistool.list_models()["segmentation"]
    assert "fcn_resnet50" not in vistool.list_models()["torchvision"]


def test_a_class_index_is_refused_for_per_pixel_scores(fcn):
    loaded, x, _, _ = fcn
    with pytest.raises(TargetError, match="give a SegmentationTarget"):
        vistool.explain(loaded, x, "gradcam", targets=0)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam",
                                    "gradcam-elementwise"])
def test_segmentation_cams_equal_pytorch_grad_cam(fcn, method):
    gc = require_peer("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    loaded, x, out, category = fcn
    target = SegmentationTarget.predicted(out, category)
    assert 0 < target.mask.float().mean() < 1  # a region, not nothing or everything
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    ours = vistool.explain(loaded, x, method, targets=target)
    assert all(torch.equal(v, before[k]) for k, v in loaded.model.state_dict().items())
    raw = ours.raw["backbone.layer4"]
    assert (raw.flatten(1).amax(1) > raw.flatten(1).amin(1)).all()

    class Out(torch.nn.Module):  # pytorch-grad-cam's tutorial: the model returning "out"
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model(images)["out"]

    peer = {"gradcam": gc.GradCAM, "gradcam++": gc.GradCAMPlusPlus, "xgradcam": gc.XGradCAM,
            "hirescam": gc.HiResCAM, "layercam": gc.LayerCAM,
            "gradcam-elementwise": gc.GradCAMElementWise}[method]
    with peer(Out(loaded.model), [loaded.model.backbone.layer4]) as cam, torch.enable_grad():
        theirs = cam(x, [SemanticSegmentationTarget(category, m.numpy()) for m in target.mask])
    expected = scale_cam_image(scale_cam_image(raw.numpy(), (80, 64)))
    np.testing.assert_allclose(expected, theirs, rtol=0, atol=1e-5)


def test_a_target_per_image_and_a_wrong_count():
    scores = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    assert SegmentationTarget([0, 2], (0, 0, 2, 2))(scores).tolist() == [
        float(scores[0, 0].sum()), float(scores[1, 2].sum())]
    with pytest.raises(TargetError, match="3 categories for 2 images"):
        SegmentationTarget([0, 1, 2], (0, 0, 1, 1))(scores)


# --- the command line ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("segmentation")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).resize((64, 64)).save(
        folder / "scene.png")  # (the model's input size: the preprocessing keeps every pixel)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 16:48] = 255
    Image.fromarray(mask).save(folder / "mask.png")
    return folder


SEG = ["gradcam", "--model", "fcn_resnet50", "--weights", "none", "--input-size", "64",
       "--device", "cpu"]


def _cli_model():
    return vistool.load_model("fcn_resnet50", weights="none", device="cpu", input_size=64,
                              seed=0)


@pytest.mark.parametrize("region", [None, "4,8,40,30", "mask.png"])
def test_gradcam_cli_explains_a_segmentation_class_over_its_pixels_or_a_region(
        scene, tmp_path, region):
    import json

    from vistool.cli import main

    out = tmp_path / "out"
    extra = [] if region is None else ["--region", str(scene / region) if "." in region
                                       else region]
    assert main([*SEG, str(scene / "scene.png"), "--target", "cow", *extra, "--out",
                 str(out)]) == 0
    info = json.loads((out / "manifest.json").read_text())
    (entry,) = info["images"][0]["explanations"]
    assert info["model"]["task"] == "segmentation" and entry["name"] == "cow"
    loaded = _cli_model()
    x = loaded.preprocess([scene / "scene.png"])
    with torch.no_grad():
        scores = loaded.model(x)["out"]
    if region is None:
        target = SegmentationTarget.predicted(scores, 10)
    elif "." in region:
        mask = torch.zeros(64, 64, dtype=torch.bool)
        mask[8:40, 16:48] = True
        target = SegmentationTarget(10, mask)
    else:
        target = SegmentationTarget(10, (4, 8, 40, 30))
    expected = vistool.explain(loaded, x, "gradcam", targets=target).raw["backbone.layer4"][0]
    np.testing.assert_allclose(np.load(out / entry["raw"][0]), expected.numpy(), rtol=1e-5,
                               atol=1e-6)
    assert entry["pixel_share"] == pytest.approx(float((scores.argmax(1) == 10).float().mean()),
                                                 abs=1e-6)
    assert (out / entry["mask"]).is_file() and (out / entry["overlay"]).is_file()
    shares = [p["pixel_share"] for p in info["images"][0]["predictions"]]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1 + 1e-6


def test_without_a_target_the_class_with_the_most_pixels_is_explained(scene, tmp_path):
    import json

    from vistool.cli import main

    assert main([*SEG, str(scene / "scene.png"), "--out", str(tmp_path / "o")]) == 0
    info = json.loads((tmp_path / "o" / "manifest.json").read_text())
    top = next(p for p in info["images"][0]["predictions"] if p["index"] != 0)
    assert info["images"][0]["explanations"][0]["target"] == top["index"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--target", "persn"], "unknown class 'persn'; did you mean 'person'"),
    (["--region", "0,0,200,10"], "reaches outside the 64x64 output"),
    (["--region", "nofile.png"], "neither a box x0,y0,x1,y1"),
    (["--method", "scorecam"], "scorecam needs class indices"),
    (["--topk", "2"], "--topk ranks a classifier's classes"),
    (["--model", "resnet18", "--region", "0,0,4,4"], "--region is for segmentation models"),
])
def test_bad_segmentation_requests_exit_2_in_one_line_writing_nothing(
        scene, tmp_path, capsys, argv, message):
    from vistool.cli import main

    out = tmp_path / "out"
    assert main([*SEG, str(scene / "scene.png"), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_a_folder_of_images_is_refused_for_now(scene, tmp_path, capsys):
    from vistool.cli import main

    assert main([*SEG, str(scene), "--out", str(tmp_path / "o")]) == 2
    assert "not yet explained for segmentation models" in capsys.readouterr().err
