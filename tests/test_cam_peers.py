"""Every CAM method that pytorch-grad-cam has equals it: on the shapes CNN trained in the suite
and on two random torchvision networks (resnet18 at layer2, where gradients vary in space;
a narrow ConvNeXt, torchvision's class, whose GELU activations give ShapleyCAM its Hessian
term, in float64: a random ConvNeXt's gradient x activation terms cancel below float32's
precision, to a millionth of their size on convnext_tiny), same layers, same targets; also with
``eigen_smooth`` and with several layers fused. LeGrad, for vision transformers alone, equals
torch-cam's on a tiny ViT trained here and on two random ones.

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

import warnings

import numpy as np
import pytest
import torch
import torchvision
from conftest import require_peer

import vistool
from vistool.core.errors import ConstantMapWarning
from vistool.drawing import normalize
from vistool.explainers.cam import explain
from vistool.explainers.cams import methods
from vistool.explainers.names import CAM_METHODS

#: method -> the peer class it is compared with, read from its specification
#: (``CamMethod.peer``: the first word of its ``reference``), so the test, the bench and the
#: docs name the same one. DFF is not a CAM class there (its own test, below).
SPECS = methods()
PEERS = {m: spec.peer.rsplit(".", 1)[1] for m, spec in SPECS.items()
         if (spec.peer or "").startswith("pytorch_grad_cam.") and m != "dff"}
#: the methods pytorch-grad-cam lacks, compared with torch-cam's: our options (fewer samples
#: than the defaults: a forward per channel and sample)
TORCHCAM_OPTIONS = {"sscam": {"samples": 2, "seed": 3}, "iscam": {"samples": 3},
                    "smoothgradcam++": {"seed": 3}}
TORCHCAM = {m: spec.peer.rsplit(".", 1)[1] for m, spec in SPECS.items()
            if (spec.peer or "").startswith("torchcam.")}
#: the methods neither peer has as a CAM class and what they are compared with instead
ELSEWHERE = {"dff": "test_dff_equals_pytorch_grad_cams_factorization, below"}
#: our options in the comparison with pytorch-grad-cam (and its arguments to match). SESS:
#: four scales, and only values above 1e-3 count in the mean of the windows' maps: at
#: pytorch-grad-cam's theta=0, whether a pixel counts is float rounding's call (a map value
#: that is 0 in one implementation is 1e-9 in the other), which moves the mean by up to 0.1.
OPTIONS = {"sess": ({"scales": 4, "theta": 1e-3}, {"num_scales": 4, "theta": 1e-3})}


#: (method, net) -> why pytorch-grad-cam's answer is not the method's there
DEVIATES = {
    ("ablationcam", "convnext"): "the layer's output goes below zero, and pytorch-grad-"
    "cam then ablates a channel by setting it to min - 1e7 instead of zero (its comment: "
    "'deviating from the paper')",
}
TOLERANCE = 5e-5


def test_every_method_has_a_reference():
    assert set(CAM_METHODS) == set(PEERS) | set(TORCHCAM) | set(ELSEWHERE)
    assert PEERS["sess"] == "SESS" and TORCHCAM["legrad"] == "LeGrad"  # (read as meant)


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
    if method == "sess":
        from pytorch_grad_cam.sess import SESS

        return SESS(model, modules, base_method=gc.GradCAM, **OPTIONS[method][1])
    return getattr(gc, PEERS[method])(model, modules)


def _call(peer, method, x, targets, eigen_smooth=False):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if method == "finercam":  # its targets: the predicted class against its nearest three
        return peer(x, eigen_smooth=eigen_smooth)
    if method == "ablationcam":
        peer.batch_size = 64
    if method == "randomcam":  # its weights: NumPy's global generator, ours seeded alike
        np.random.seed(0)
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
    ours = explain(model, x, method, layer=layers, batch_size=64,
                   options=OPTIONS.get(method, ({},))[0])
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


def test_sess_options_equal_pytorch_grad_cams(gc, nets):
    """Every SESS option against pytorch-grad-cam's argument of the same meaning."""
    from pytorch_grad_cam.sess import SESS

    model, x, layers = nets["shapes"]
    options = {"scales": 3, "scale_step": 0.5, "window": 48, "step": 20, "pre_filter": 0.3,
               "pool": "max", "blur": 0.0, "weights": "score", "base": "gradcam++"}
    ours = explain(model, x, "sess", layer=layers[-1], options=options)
    _not_flat(ours.raw["input"])
    peer = SESS(model, [model.get_submodule(layers[-1])], base_method=gc.GradCAMPlusPlus,
                num_scales=3, scale_step_ratio=0.5, window_size=48, step_size=20,
                pre_filter_ratio=0.3, pool="max", smooth=False, use_softmax_scores=False)
    theirs = _call(peer, "sess", x, ours.targets)
    np.testing.assert_allclose(ours.maps.numpy(), theirs, rtol=0, atol=TOLERANCE)


def test_fused_layers_equal_pytorch_grad_cams_mean(gc, nets):
    model, x, layers = nets["resnet18"]
    ours = explain(model, x, "gradcam", layer=layers, fuse="mean")
    with torch.enable_grad():
        theirs = _call(_peer(gc, "gradcam", model, layers), "gradcam", x, ours.targets)
    expected = _their_pipeline(ours, tuple(x.shape[:1:-1]), False)
    np.testing.assert_allclose(expected, theirs, rtol=0, atol=TOLERANCE)


# ---------------------------------------------------------------------------------------------
# torch-cam: the methods pytorch-grad-cam lacks (and Score-CAM with torch-cam's masks). Its
# maps are at layer resolution, min-max scaled; its noise comes from the global generator,
# seeded in the test as ours is.


@pytest.fixture(scope="module")
def tc():
    return require_peer("torchcam.methods")


def _torch_cam(peer_class, model, x, layer, targets, seed=0, **kwargs) -> torch.Tensor:
    with peer_class(model, target_layer=layer, input_shape=tuple(x.shape[1:]), **kwargs) as peer:
        with torch.enable_grad():  # Smooth Grad-CAM++ back-propagates from these scores
            scores = model(x)
        torch.manual_seed(seed)
        return peer(targets.tolist(), scores)[0].detach()


@pytest.mark.parametrize("net", ["shapes", "resnet18", "convnext"])
@pytest.mark.parametrize("method", ["scorecam", "sscam", "iscam"])
def test_score_cam_family_equals_torch_cam(tc, nets, net, method):
    model, x, layers = nets[net]
    x, layer = x[:1], layers[-1]  # a forward per channel (and sample): one image
    name, options = ((TORCHCAM[method], TORCHCAM_OPTIONS[method]) if method in TORCHCAM
                     else ("ScoreCAM", {"scaling": "layer"}))
    ours = explain(model, x, method, layer=layer, options=options, batch_size=64)
    _not_flat(ours.raw[layer])
    extra = {"num_samples": options["samples"]} if "samples" in options else {}
    theirs = _torch_cam(getattr(tc, name), model, x, layer, ours.targets,
                        options.get("seed", 0), batch_size=64, **extra)
    _not_flat(theirs)
    torch.testing.assert_close(normalize(ours.raw[layer]), theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(("net", "layer", "negative"),
                         [("shapes", "features", True), ("resnet18", "layer4", False)])
def test_cam_equals_torch_cam_through_a_relu(tc, nets, net, layer, negative):
    """torch-cam's CAM is the class's weighted channel sum without a ReLU; ours has one (on
    the shapes CNN the sum goes below zero, so the ReLU is exercised)."""
    model, x, _ = nets[net]
    ours = explain(model, x, "cam", layer=layer)
    _not_flat(ours.raw[layer])
    with tc.CAM(model, target_layer=layer, fc_layer="fc", input_shape=tuple(x.shape[1:])) \
            as peer, torch.no_grad():
        theirs = peer(ours.targets.tolist(), model(x), normalized=False)[0]
    assert bool((theirs < 0).any()) == negative
    torch.testing.assert_close(normalize(ours.raw[layer]), normalize(theirs.clamp_min(0)),
                               rtol=0, atol=TOLERANCE)


def _as_in_the_paper(tc):
    """torch-cam's SmoothGradCAMpp with its three deviations from the paper corrected: the
    mean gradient (not the last sample's) in the weights, the activations' sum times the
    third derivative (not the sum over space of their product) in alpha's denominator, and
    the input's activations (not the last sample's) in the map."""

    class AsInThePaper(tc.SmoothGradCAMpp):
        def _compute_smoothgrad_weights(self, class_idx, eps, **kwargs):
            clean = [a.clone() for a in self.hook_a]
            sums = [[torch.zeros_like(a) for a in clean] for _ in range(3)]
            for _ in range(self.num_samples):
                noisy = self._input + self._distrib.sample(self._input.size())
                self._backprop(self.model(noisy), class_idx, **kwargs)
                for power, totals in enumerate(sums, 1):
                    for total, grad in zip(totals, self.hook_g):
                        total.add_(grad.pow(power))
            self.hook_a = clean
            weights = []
            for d1, d2, d3, act in zip(*sums, clean):
                d1, d2, d3 = (d / self.num_samples for d in (d1, d2, d3))
                alpha = d2 / (2 * d2 + act.flatten(2).sum(-1)[..., None, None] * d3 + eps)
                weights.append((alpha * d1.relu()).flatten(2).sum(-1))
            return weights

    return AsInThePaper


@pytest.mark.parametrize("net", ["shapes", "resnet18", "convnext"])
def test_smooth_gradcam_pp_equals_torch_cam_as_in_the_paper(tc, nets, net):
    model, x, layers = nets[net]
    layer = layers[-1]
    ours = explain(model, x, "smoothgradcam++", layer=layer,
                   options=TORCHCAM_OPTIONS["smoothgradcam++"])
    _not_flat(ours.raw[layer])
    theirs = _torch_cam(_as_in_the_paper(tc), model, x, layer, ours.targets, 3)
    torch.testing.assert_close(normalize(ours.raw[layer]), theirs, rtol=0, atol=TOLERANCE)
    as_is = _torch_cam(tc.SmoothGradCAMpp, model, x, layer, ours.targets, 3)
    assert (as_is - theirs).abs().max() > 1e-2  # the deviations change its maps here


def test_smooth_gradcam_pp_equals_torch_cam_where_its_deviations_vanish(tc, nets):
    """No noise (torch-cam refuses std=0: 1e-20 adds nothing), at the layer before global
    pooling (the gradient is constant in space): torch-cam's SmoothGradCAMpp as it is."""
    model, x, _ = nets["resnet18"]
    ours = explain(model, x, "smoothgradcam++", layer="layer4", options={"std": 0.0})
    _not_flat(ours.raw["layer4"])
    theirs = _torch_cam(tc.SmoothGradCAMpp, model, x, "layer4", ours.targets, std=1e-20)
    torch.testing.assert_close(normalize(ours.raw["layer4"]), theirs, rtol=0, atol=TOLERANCE)


def _vit(depth: int, heads: int, size: int, patch: int, dtype=torch.float32):
    """A random torchvision VisionTransformer (its head drawn too: torchvision zeroes it) and
    two images."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(size, patch, num_layers=depth, num_heads=heads,
                                                 hidden_dim=16 * heads, mlp_dim=32 * heads,
                                                 num_classes=10)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    model = model.eval().to(dtype)
    return model, torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5),
                              dtype=dtype)


def _quadrant_data(n: int, generator: torch.Generator):
    """Dim noise with one bright square on a patch of an 8-pixel grid; the class: the
    quadrant the square is in."""
    x = torch.rand(n, 3, 32, 32, generator=generator) * 0.3
    cell = torch.randint(0, 16, (n,), generator=generator)
    row, col = cell // 4, cell % 4
    for i in range(n):
        x[i, :, row[i] * 8 + 1:row[i] * 8 + 7, col[i] * 8 + 1:col[i] * 8 + 7] = 1.0
    return x, (row // 2) * 2 + col // 2


@pytest.fixture(scope="module")
def trained_vit():
    """A tiny torchvision VisionTransformer trained for 600 steps (8 s) to tell the quadrant
    of a bright square (61% on new images, chance 25%), and 8 new images."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(32, 8, num_layers=2, num_heads=2,
                                                 hidden_dim=64, mlp_dim=128, num_classes=4)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    generator = torch.Generator().manual_seed(1)
    for _ in range(600):
        x, y = _quadrant_data(64, generator)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    x, y = _quadrant_data(64, torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.5
    return model, x[:8]


def test_legrad_equals_torch_cam_on_a_trained_vision_transformer(tc, trained_vit):
    model, x = trained_vit
    blocks = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    with warnings.catch_warnings():  # a block whose gradient is nowhere positive for an
        warnings.simplefilter("ignore", ConstantMapWarning)  # image: zero there (torch-cam's too)
        ours = explain(model, x, "legrad", layer=blocks)
    summed = sum(ours.raw.values())
    _not_flat(summed)
    with tc.LeGrad(model, blocks) as peer:
        theirs = peer(ours.targets.tolist(), model(x))[0]
    torch.testing.assert_close(normalize(summed), theirs, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(("case", "layers", "pool"), [
    ("3 blocks, float32", ["encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_2"],
     "mean"),
    ("2 blocks, float64", ["encoder.layers.encoder_layer_1.ln_1"], "mean"),
    ("2 blocks, float64", ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"],
     "token")])
def test_legrad_equals_torch_cam(tc, case, layers, pool):
    """Two blocks' maps summed (torch-cam: their mean), or one block's named by a module in
    it; each block's tokens read by the head through their mean (torch-cam's) or, given
    torch-cam the same projection, through the class token; the two most likely classes."""
    model, x = _vit(3, 2, 32, 8) if case.endswith("float32") else _vit(2, 4, 48, 8,
                                                                        torch.float64)
    ours = explain(model, x, "legrad", layer=layers, topk=2, options={"pool": pool})
    summed = sum(ours.raw.values())
    assert summed.shape == (2, 2, *(2 * [x.shape[-1] // 8]))
    projection = {} if pool == "mean" else {
        "score_projection": lambda tokens: model.heads(model.encoder.ln(tokens[:, 0]))}
    blocks = [".".join(name.split(".")[:3]) for name in layers]
    for k in range(2):
        _not_flat(summed[:, k])
        with tc.LeGrad(model, blocks, **projection) as peer:
            theirs = peer(ours.targets[:, k].tolist(), model(x))[0]
        torch.testing.assert_close(normalize(summed[:, k]), theirs, rtol=0, atol=TOLERANCE)
    expected = normalize(torch.nn.functional.interpolate(summed.float(), size=x.shape[2:],
                                                         mode="bilinear"))
    torch.testing.assert_close(ours.maps, expected, rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Deep Feature Factorization: pytorch-grad-cam's DeepFeatureFactorization (scikit-learn's NMF)


@pytest.mark.parametrize(("net", "rtol"), [("shapes", 1e-4), ("resnet18", 1e-9)])
def test_dff_equals_pytorch_grad_cams_factorization(gc, nets, net, rtol):
    """The concepts, their maps and their class scores; the shapes CNN in float32 (the two
    NMFs round differently: 1e-5 of the largest value), resnet18 (layer4: its head scores
    the concepts) in float64, where they agree to rounding."""
    from vistool.explainers.factorization import factorize

    model, x, _ = nets[net]
    layer = "features" if net == "shapes" else "layer4"
    if net == "resnet18":
        model, x = _random("resnet18", [], 64, torch.float64)[:2]
    ours = factorize(model, x, layer, concepts=4)
    head = model.fc
    peer = gc.DeepFeatureFactorization(model, model.get_submodule(layer),
                                       computation_on_concepts=lambda c: head(c.to(x.dtype)))
    concepts, maps, scores = peer(x, 4)
    scale = np.abs(concepts).max()
    np.testing.assert_allclose(ours.concepts.numpy().T, concepts, rtol=0, atol=rtol * scale)
    np.testing.assert_allclose(ours.maps.numpy(), np.stack(maps), rtol=0, atol=TOLERANCE)
    # (their concepts go through float32 before the head)
    np.testing.assert_allclose(ours.scores.numpy(), scores, rtol=0, atol=1e-5 * np.abs(
        scores).max())
    assert ours.rounds > 1 and len(set(ours.maps.flatten(2).argmax(2).flatten().tolist())) > 1
    cams = explain(model, x, "dff", layer=layer, topk=2, options={"concepts": 4})
    best = ours.scores.argmax(0)[cams.targets]  # each class's concept
    torch.testing.assert_close(cams.raw[layer], ours.raw.gather(
        1, best[..., None, None].expand(-1, -1, *ours.raw.shape[2:])))
