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
