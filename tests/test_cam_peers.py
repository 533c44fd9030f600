"""Every CAM method that pytorch-grad-cam has equals it: on the shapes CNN trained in the suite
and on two random torchvision networks (resnet18 at layer2, where gradients vary in space;
a narrow ConvNeXt, torchvision's class, whose GELU activations give ShapleyCAM its Hessian
term, in float64: a random ConvNeXt's gradient x activation terms cancel below float32's
precision, to a millionth of their size on convnext_tiny), same layers, same targets; also with
``eigen_smooth`` and with several layers fused.

pytorch-grad-cam returns maps at input resolution: min-max scaled at layer resolution,
resized with OpenCV and scaled again (several layers: the mean or, RefineCAM, the product of
those, scaled). Each of our raw layer maps goes through that same pipeline and must equal
theirs within 5e-5 of the peak (float32 rounding: their NumPy against our torch; the
largest difference, 2.8e-5, is Grad-CAM++'s on the shapes CNN). Where the peer's answer
is arbitrary, the test says so and fixes it the way we do: an SVD's sign (Eigen-CAM,
Eigen-Grad-CAM and ``eigen_smooth``) is made to agree with the channel sum. Where the peer
deviates from the method, the case checks the reason instead (DEVIATES) and the method is
checked by hand in tests/test_cam.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision
from conftest import require_peer

import vistool
from vistool.explainers.cam import explain
from vistool.explainers.names import CAM_METHODS

#: method -> pytorch-grad-cam's class
PEERS = {
    "gradcam": "GradCAM", "hirescam": "HiResCAM", "gradcam-elementwise": "GradCAMElementWise",
    "gradcam++": "GradCAMPlusPlus", "xgradcam": "XGradCAM", "layercam": "LayerCAM",
    "scorecam": "ScoreCAM", "ablationcam": "AblationCAM", "eigencam": "EigenCAM",
    "eigengradcam": "EigenGradCAM", "kpcacam": "KPCA_CAM", "fem": "FEM",
    "segeigencam": "SegEigenCAM", "shapleycam": "ShapleyCAM", "finercam": "FinerCAM",
    "refinecam": "RefineCAM", "fullgrad": "FullGrad",
}
#: the methods pytorch-grad-cam lacks and what they are compared with instead
ELSEWHERE = {"cam": "tests/test_cam.py: by hand, and as Grad-CAM up to scale"}


#: (method, net) -> why pytorch-grad-cam's answer is not the method's there
DEVIATES = {
    ("ablationcam", "convnext"): "the layer's output goes below zero, and pytorch-grad-"
    "cam then ablates a channel by setting it to min - 1e7 instead of zero (its comment: "
    "'deviating from the paper')",
}
TOLERANCE = 5e-5


def test_every_method_has_a_reference():
    assert set(CAM_METHODS) == set(PEERS) | set(ELSEWHERE)


@pytest.fixture(scope="module")
def gc():
    """pytorch-grad-cam, its SVD projections signed as ours (see the module's docstring)."""
    gc = require_peer("pytorch_grad_cam")
    import pytorch_grad_cam.base_cam
    import pytorch_grad_cam.eigen_cam
    import pytorch_grad_cam.eigen_grad_cam
    import pytorch_grad_cam.grad_cam_elementwise
    import pytorch_grad_cam.hirescam
    import pytorch_grad_cam.layer_cam
    from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection

    def signed(batch):
        proj = get_2d_projection(batch)
        sums = np.nan_to_num(batch).sum(1)
        flip = (proj * sums).sum((1, 2)) < 0
        return np.where(flip[:, None, None], -proj, proj).astype(np.float32)

    modules = [pytorch_grad_cam.base_cam, pytorch_grad_cam.eigen_cam,
               pytorch_grad_cam.eigen_grad_cam, pytorch_grad_cam.grad_cam_elementwise,
               pytorch_grad_cam.hirescam, pytorch_grad_cam.layer_cam]
    with pytest.MonkeyPatch.context() as patch:
        for module in modules:
            patch.setattr(module, "get_2d_projection", signed)
        yield gc


def _random(name: str, layers: list[str], size: int, dtype=torch.float32):
    torch.manual_seed(0)
    if name == "convnext":  # torchvision's ConvNeXt, three narrow stages of two blocks
        from torchvision.models.convnext import CNBlockConfig, ConvNeXt

        model = ConvNeXt([CNBlockConfig(32, 64, 2), CNBlockConfig(64, 128, 2),
                          CNBlockConfig(128, None, 2)], num_classes=10)
    else:
        model = getattr(torchvision.models, name)(weights=None, num_classes=10)
    model = model.eval().to(dtype)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5), dtype=dtype)
    return model, x, layers


@pytest.fixture(scope="module")
def nets(trained_shapes):
    loaded = vistool.load_model(str(trained_shapes[0]), device="cpu")
    rng = np.random.default_rng(3)
    from vistool.data.shapes import render_scene

    x = torch.stack([loaded.transform(vistool.load_image(render_scene(rng, 64, [c]).image))
                     for c in (1, 3)])
    return {"shapes": (loaded.model.eval(), x, ["features.12", loaded.default_layer]),
            "resnet18": _random("resnet18", ["layer3", "layer2"], 64),
            "convnext": _random("convnext", ["features.3", "features.1"], 32, torch.float64)}


def _not_flat(maps) -> None:
    flat = torch.as_tensor(maps).flatten(1)
    assert (flat.amax(1) > 0).all() and (flat.amax(1) > flat.amin(1)).all(), flat.amax(1)


def _their_pipeline(ours, size, product: bool) -> np.ndarray:
    from pytorch_grad_cam.utils.image import scale_cam_image

    layers = list(ours.raw)
    if product:  # RefineCAM: the product of each layer's map as one layer makes it
        per_layer = [scale_cam_image(scale_cam_image(ours.raw[n].numpy(), size)) for n in layers]
        return scale_cam_image(np.prod(per_layer, 0))
    return scale_cam_image(np.mean([scale_cam_image(ours.raw[n].numpy(), size) for n in layers],
                                   0))


def _peer(gc, method, model, layers):
    modules = [model.get_submodule(n) for n in layers]
    if method == "refinecam":
        return gc.RefineCAM(model, modules)
    if method == "fullgrad":  # it finds its layers itself (and says so if given some)
        return gc.FullGrad(model, [])
    return getattr(gc, PEERS[method])(model, modules)


def _call(peer, method, x, targets, eigen_smooth=False):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method == "finercam":  # its targets: the predicted class against its nearest three
        return peer(x, eigen_smooth=eigen_smooth)
    if method == "ablationcam":
        peer.batch_size = 64
    return peer(x, [ClassifierOutputTarget(int(t)) for t in targets], eigen_smooth=eigen_smooth)


@pytest.mark.parametrize("net", ["shapes", "resnet18", "convnext"])
@pytest.mark.parametrize("method", list(PEERS))
def test_each_method_equals_pytorch_grad_cam(gc, nets, net, method):
    model, x, layers = nets[net]
    layers = layers if method == "refinecam" else layers[-1:]
    if (method, net) in DEVIATES:  # the reason holds: the layer's output is negative somewhere
        with torch.no_grad(), vistool.record(model, layers) as rec:
            model(x)
        assert rec[layers[0]].amin() < 0, DEVIATES[method, net]
        return
    if method in ("scorecam", "ablationcam"):
        x = x[:1]  # a forward per channel: one image is enough
    ours = explain(model, x, method, layer=layers, batch_size=64)
    for raw in ours.raw.values():
        _not_flat(raw)
    with torch.enable_grad():
        theirs = _call(_peer(gc, method, model, layers), method, x, ours.targets)
    _not_flat(theirs)
    expected = _their_pipeline(ours, tuple(x.shape[:1:-1]), method == "refinecam")
    np.testing.assert_allclose(expected, theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam",
                                    "gradcam-elementwise", "scorecam"])
def test_eigen_smooth_equals_pytorch_grad_cam(gc, nets, method):
    model, x, layers = nets["shapes"]
    ours = explain(model, x, method, layer=layers[-1], eigen_smooth=True, batch_size=64)
    _not_flat(ours.raw[layers[-1]])
    plain = explain(model, x, method, layer=layers[-1], batch_size=64)
    assert not torch.allclose(ours.raw[layers[-1]], plain.raw[layers[-1]])
    with torch.enable_grad():
        theirs = _call(_peer(gc, method, model, layers[-1:]), method, x, ours.targets,
                       eigen_smooth=True)
    expected = _their_pipeline(ours, tuple(x.shape[:1:-1]), False)
    np.testing.assert_allclose(expected, theirs, rtol=0, atol=TOLERANCE)


def test_fused_layers_equal_pytorch_grad_cams_mean(gc, nets):
    model, x, layers = nets["resnet18"]
    ours = explain(model, x, "gradcam", layer=layers, fuse="mean")
    with torch.enable_grad():
        theirs = _call(_peer(gc, "gradcam", model, layers), "gradcam", x, ours.targets)
    expected = _their_pipeline(ours, tuple(x.shape[:1:-1]), False)
    np.testing.assert_allclose(expected, theirs, rtol=0, atol=TOLERANCE)
