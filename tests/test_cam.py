"""The CAM family: exact values on a hand-weighted model, agreement with captum,
pytorch-grad-cam and torch-cam, the closed-form fast path, batching, top-k, targets, and
model-state restoration."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import require_peer
from torch import nn

from vistool import TargetError, VistoolError
from vistool.drawing import normalize
from vistool.explainers.cam import CAM_METHODS, ConstantMapWarning, explain, linear_head

X = torch.tensor([[1.0, 2.0, 0.0], [0.0, -1.0, 3.0], [1.0, 0.0, -2.0]])


class HandNet(nn.Module):
    """conv 1x1 (1 -> 2 channels: x and -x) -> ReLU(inplace) -> GAP -> linear [[2, 1], [-1, 3]]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[2.0, 1.0], [-1.0, 3.0]]))

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture
def hand():
    return HandNet().eval()


def batch():
    return X.view(1, 1, 3, 3)


def test_gradcam_and_cam_by_hand(hand):
    relu_x, relu_neg = X.clamp_min(0), (-X).clamp_min(0)
    # After the ReLU, d score_c / d A_k = W[c, k] / 9 everywhere: the CAM closed form.
    expected0 = (2 * relu_x + relu_neg) / 9
    expected1 = (-relu_x + 3 * relu_neg).clamp_min(0) / 9
    for method in ("gradcam", "cam"):
        for target, expected in ((0, expected0), (1, expected1)):
            result = explain(hand, batch(), method, targets=target, layer="relu")
            assert result.closed_form
            torch.testing.assert_close(result.raw["relu"][0], expected, rtol=0, atol=1e-7)
    generic = explain(hand, batch(), "gradcam", targets=0, layer="relu", closed_form=False)
    assert not generic.closed_form
    torch.testing.assert_close(generic.raw["relu"][0], expected0, rtol=0, atol=1e-7)


def test_gradcam_before_an_inplace_relu_uses_the_layers_own_gradient(hand):
    # At "conv" the gradient is W[c, k] / 9 where conv > 0, else 0 (the in-place ReLU's mask).
    # Class 0: channel 0 (x) is positive at 4 of 9 pixels, channel 1 (-x) at 2, so the
    # weights are 2/9*4/9 and 1/9*2/9, and the map is relu(8/81 x - 2/81 x) = 6/81 relu(x).
    result = explain(hand, batch(), "gradcam", targets=0, layer="conv")
    assert not result.closed_form  # a ReLU sits between the layer and the pooling
    torch.testing.assert_close(result.raw["conv"][0], 6 / 81 * X.clamp_min(0), rtol=0,
                               atol=1e-7)
    hires = explain(hand, batch(), "hirescam", targets=0, layer="conv")
    torch.testing.assert_close(hires.raw["conv"][0], (2 * X.clamp_min(0) + (-X).clamp_min(0))
                               / 9, rtol=0, atol=1e-7)


def test_ablationcam_by_hand_in_both_paths(hand):
    # Base score of class 0: 2 * mean(relu x) + mean(relu -x) = 2 * 7/9 + 3/9 = 17/9.
    # Zeroing channel 0 drops it by 14/9, channel 1 by 3/9: weights 14/17 and 3/17.
    expected = (14 * X.clamp_min(0) + 3 * (-X).clamp_min(0)) / 17
    for closed in (None, False):
        result = explain(hand, batch(), "ablationcam", targets=0, layer="relu",
                         closed_form=closed)
        assert result.closed_form is (closed is None)
        torch.testing.assert_close(result.raw["relu"][0], expected, rtol=0, atol=1e-6)


def test_scorecam_matches_its_definition(hand):
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4))
    torch.manual_seed(1)
    net.eval()
    result = explain(net, x, "scorecam", targets=[1, 2], layer="2", batch_size=2)
    with torch.no_grad():
        acts = net[:3](x)
        for i, target in enumerate((1, 2)):
            scores = []
            for k in range(3):
                up = F.interpolate(acts[i:i + 1, k:k + 1], size=(6, 6), mode="bilinear",
                                   align_corners=True)
                mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
                scores.append(net(x[i:i + 1] * mask)[0, target])
            weights = torch.stack(scores).softmax(0)
            expected = (weights[:, None, None] * acts[i]).sum(0).clamp_min(0)
            torch.testing.assert_close(result.raw["2"][i], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("channels", "scale", "eigh_fails"), [
    (4, 1.0, False), (40, 1.0, False),  # fewer channels than positions, and more
    (4, 1e-25, False), (40, 1e-25, False),  # squared, these would underflow float32
    (4, 1.0, True)])  # LAPACK's eigh returns NaN: the SVD answers
def test_eigencam_is_the_first_principal_component(monkeypatch, channels, scale, eigh_fails):
    act = torch.randn(1, channels, 5, 5, generator=torch.Generator().manual_seed(3)).abs() * scale
    flat = act[0].double().reshape(channels, 25).T
    centred = flat - flat.mean(0)
    v = torch.linalg.svd(centred).Vh[0]
    proj = centred @ v
    proj = proj if (proj * flat.sum(1)).sum() >= 0 else -proj
    if eigh_fails:
        monkeypatch.setattr(torch.linalg, "eigh", lambda a: (
            torch.full(a.shape[:-1], float("nan")), torch.full_like(a, float("nan"))))
    net = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 2, 1))
    result = explain(net, act, "eigencam", targets=lambda out: out.sum((1, 2, 3)), layer="0")
    expected = proj.reshape(5, 5).clamp_min(0).float()
    assert expected.amax() > 0
    torch.testing.assert_close(result.raw["0"][0], expected, atol=1e-5 * float(expected.amax()),
                               rtol=1e-5)


@pytest.mark.parametrize(("name", "layer"), [("resnet18", "layer4"), ("resnet18", "layer3"),
                                             ("vgg16", "features.28"), ("vgg16", "features")])
def test_gradcam_equals_captum_layergradcam(name, layer):
    from captum.attr import LayerAttribution, LayerGradCam

    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    result = explain(model, x, "gradcam", layer=layer)
    assert (result.maps.amax((1, 2)) == 1).all()  # no degenerate all-zero map
    module = dict(model.named_modules())[layer]
    attr = LayerGradCam(model, module).attribute(x, target=result.targets,
                                                 relu_attributions=True)
    ref = normalize(LayerAttribution.interpolate(attr, (224, 224), "bilinear")[:, 0])
    assert (result.maps - ref).abs().max().item() <= 1e-5
    torch.testing.assert_close(result.raw[layer], attr[:, 0], rtol=1e-4, atol=1e-7)


def test_guided_gradcam_equals_captum():
    from captum.attr import GuidedGradCam

    from vistool.explainers.attribution import attribute

    torch.manual_seed(0)
    model = torchvision.models.vgg16(weights=None).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    ours = attribute(model, x, "guided-gradcam", targets=7, layer="features.28").raw
    ref = GuidedGradCam(model, model.features[28]).attribute(x.clone().requires_grad_(),
                                                             target=7)
    assert (ours - ref).abs().max().item() <= 1e-5 * ref.abs().max().item()
    assert all(m.inplace for m in model.modules() if isinstance(m, nn.ReLU))


# The peers' classes for our methods: pytorch-grad-cam follows the papers' formulas for all
# three; torch-cam's Grad-CAM++ is left out (its alpha's division is a no-op on a copy, so its
# weights are sum(relu(G) * G²): not the paper's).
TORCH_CAM_PEERS = {"xgradcam": "XGradCAM", "layercam": "LayerCAM"}


@pytest.fixture(scope="module")
def peer_resnet():
    """A random resnet18 and a 128² batch, each image's two top classes explained at layer3
    (8²: gradients vary in space, the generic path) and layer4 (4²: the closed form)."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return model, x, model(x).topk(2, 1).indices


def _not_flat(maps: torch.Tensor) -> None:
    """Every map has a positive peak and is not constant (a zero map would agree with any)."""
    flat = maps.flatten(1)
    assert (flat.amax(1) > 0).all() and (flat.amax(1) > flat.amin(1)).all(), flat.amax(1)


@pytest.mark.parametrize("layer", ["layer3", "layer4"])
@pytest.mark.parametrize("method", list(TORCH_CAM_PEERS))
def test_gradient_cams_equal_torch_cam(peer_resnet, method, layer):
    methods = require_peer("torchcam.methods")
    model, x, top = peer_resnet
    for targets in top.T:
        ours = explain(model, x, method, targets=targets, layer=layer)
        _not_flat(ours.raw[layer])
        with getattr(methods, TORCH_CAM_PEERS[method])(model, target_layer=layer,
                                                       input_shape=x.shape[1:]) as peer:
            scores = model(x)
            theirs = peer(targets.tolist(), scores)[0].detach()  # layer resolution, scaled
        _not_flat(theirs)
        torch.testing.assert_close(normalize(ours.raw[layer]), theirs, rtol=0, atol=2e-5)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam",
                                    "ablationcam"])
def test_closed_form_equals_generic_path_on_random_weights(method):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    fast = explain(model, x, method, topk=2, batch_size=128)
    slow = explain(model, x, method, topk=2, closed_form=False, batch_size=128)
    assert fast.closed_form
    assert not slow.closed_form
    # Ablation's generic path subtracts two nearly equal logits: allow for the cancellation.
    rtol = 2e-3 if method == "ablationcam" else 1e-4
    torch.testing.assert_close(fast.raw["layer4"], slow.raw["layer4"], rtol=rtol, atol=1e-6)
    assert (fast.maps - slow.maps).abs().max() <= rtol


def test_linear_head_detection():
    x = torch.zeros(1, 3, 64, 64)
    resnet = torchvision.models.resnet18(weights=None).eval()
    assert linear_head(resnet, "layer4", x) is resnet.fc
    assert linear_head(resnet, "layer3", x) is None
    googlenet = torchvision.models.googlenet(weights=None, init_weights=False).eval()
    assert linear_head(googlenet, "inception5b", x) is googlenet.fc
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None).eval()
    assert linear_head(mobilenet, "features", x) is None  # Linear-Hardswish-Linear head
    vgg = torchvision.models.vgg11(weights=None).eval()
    assert linear_head(vgg, "features", x) is None
    with pytest.raises(VistoolError, match="cam's closed form does not apply; use gradcam"):
        explain(vgg, x, "cam", layer="features")


def test_batch_equals_one_by_one():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    for method, kwargs in (("gradcam", {"closed_form": False}), ("gradcam++", {}),
                           ("scorecam", {"channels": 8}), ("eigencam", {})):
        together = explain(model, x, method, **kwargs)
        for i in range(3):
            alone = explain(model, x[i:i + 1], method, **kwargs)
            assert alone.targets[0] == together.targets[i]
            assert (alone.maps[0] - together.maps[i]).abs().max() <= 1e-4, method


def test_topk_equals_explaining_each_class():
    torch.manual_seed(0)
    model = torchvision.models.vgg11(weights=None).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    top = explain(model, x, "gradcam", topk=3, layer="features.18")
    assert top.maps.shape == (2, 3, 64, 64)
    assert torch.equal(top.targets, top.logits.topk(3, 1).indices)
    for j in range(3):
        single = explain(model, x, "gradcam", targets=top.targets[:, j], layer="features.18")
        torch.testing.assert_close(single.maps, top.maps[:, j], rtol=0, atol=1e-5)
        torch.testing.assert_close(single.probs, top.probs[:, j])


def test_multi_layer_fusion_is_mean_of_normalised_upsampled_maps():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(7))
    fused = explain(model, x, "gradcam", targets=1, layer=["layer3", "layer4"])
    parts = [F.interpolate(normalize(explain(model, x, "gradcam", targets=1, layer=name).raw[
        name])[None], size=(64, 64), mode="bilinear") for name in ("layer3", "layer4")]
    torch.testing.assert_close(fused.maps, normalize((parts[0] + parts[1])[0] / 2), atol=1e-6,
                               rtol=0)
    assert set(fused.raw) == {"layer3", "layer4"}


def test_targets_and_errors(hand):
    with pytest.raises(TargetError, match=r"class index 5 is out of range.*0\.\.1"):
        explain(hand, batch(), targets=5, layer="relu")
    with pytest.raises(TargetError, match="got 2 targets for 1 images"):
        explain(hand, batch(), targets=[0, 1], layer="relu")
    with pytest.raises(VistoolError,
                       match=r"unknown CAM method 'gradcam\+'; did you mean 'gradcam\+\+'"):
        explain(hand, batch(), "gradcam+", layer="relu")
    result = explain(hand, batch(), "gradcam", targets=lambda out: out[:, 0] - out[:, 1],
                     layer="relu")
    assert result.targets is None
    # score 0 - score 1 has gradient (W0 - W1) / 9 = (3, -2) / 9
    expected = (3 * X.clamp_min(0) - 2 * (-X).clamp_min(0)).clamp_min(0) / 9
    torch.testing.assert_close(result.raw["relu"][0], expected, rtol=0, atol=1e-7)


def test_score_independent_of_the_layer_gives_a_zero_map(hand):
    with pytest.warns(ConstantMapWarning):
        result = explain(hand, batch(), "gradcam", layer="relu", closed_form=False,
                         targets=lambda out: torch.ones(out.shape[0]))
    assert torch.equal(result.maps, torch.zeros(1, 3, 3))


def test_constant_map_is_zero_with_a_warning(hand):
    with torch.no_grad():
        hand.fc.weight[1] = 0.0
    with pytest.warns(ConstantMapWarning, match="constant"):
        result = explain(hand, batch(), "gradcam", targets=1, layer="relu")
    assert torch.equal(result.maps, torch.zeros(1, 3, 3))
    assert not torch.isnan(result.maps).any()


def _state(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            [m.training for m in model.modules()],
            [(p.requires_grad, None if p.grad is None else p.grad.clone())
             for p in model.parameters()],
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                for m in model.modules()))


@pytest.mark.parametrize("method", CAM_METHODS)
def test_model_unchanged_after_every_method_also_when_raising(method):
    torch.manual_seed(0)
    if method == "legrad":  # vision transformers alone
        model = torchvision.models.VisionTransformer(64, 16, 2, 2, 32, 64)
        first, frozen, head = model.encoder.layers[0], model.conv_proj, model.heads.head
    else:
        model = torchvision.models.resnet18(weights=None)
        first, frozen, head = model.layer1, model.conv1, model.fc
    model.train()
    first.eval()
    frozen.weight.requires_grad_(False)
    head.weight.grad = torch.ones_like(head.weight)
    before = _state(model)
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantMapWarning)
        explain(model, x, method, topk=2, channels=8)
        with pytest.raises(TargetError):
            explain(model, x, method, targets=1000)
    after = _state(model)
    assert before[1:2] == after[1:2]
    assert before[3] == after[3]
    assert all(torch.equal(before[0][k], after[0][k]) for k in before[0])
    for (rg0, g0), (rg1, g1) in zip(before[2], after[2]):
        assert rg0 == rg1
        assert (g0 is None and g1 is None) or torch.equal(g0, g1)


def test_gradient_methods_cost_one_forward_and_the_closed_form_no_backward(monkeypatch):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(9))
    explain(model, x, "gradcam", layer="layer4")  # probes the head (cached per model)
    forwards, backwards = [], []
    real_grad = torch.autograd.grad

    def counted_grad(*args, **kwargs):
        backwards.append(1)
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counted_grad)
    handle = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        for method in ("gradcam", "gradcam++", "layercam"):
            forwards.clear()
            backwards.clear()
            generic = explain(model, x, method, topk=2, layer="layer4", closed_form=False)
            assert not generic.closed_form
            assert (len(forwards), len(backwards)) == (1, 2)  # one backward per explained class
            forwards.clear()
            backwards.clear()
            assert explain(model, x, method, topk=2, layer="layer4").closed_form
            assert (len(forwards), len(backwards)) == (1, 0)
    finally:
        handle.remove()


@pytest.mark.parametrize(("method", "layer", "closed"), [
    ("gradcam", "layer4", True), ("gradcam++", "layer3", False), ("eigencam", "layer3", False),
    ("cam", "layer4", True)])
def test_fast_copy_explains_like_the_model(monkeypatch, method, layer, closed):
    from vistool.explainers import cam
    from vistool.explainers.inference import _Kept, _OneDnnConv

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=6).eval()
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(10))
    fast = cam.fast_copy(model, method, [layer], x)
    assert isinstance(fast.get_submodule(layer), _Kept)
    # forward-only explanations run oneDNN-fused convolutions; autograd needs plain ones
    forward_only = closed or method == "eigencam"
    assert any(isinstance(m, _OneDnnConv) for m in fast.modules()) == forward_only
    probes = []
    monkeypatch.setattr(cam, "_probe_linear_head", lambda *a: probes.append(a))
    ours = explain(fast, x, method, layer=layer, topk=2)
    assert not probes  # the copy's head is known from the model's
    theirs = explain(model, x, method, layer=layer, topk=2)
    assert ours.closed_form == theirs.closed_form == closed
    assert torch.equal(ours.targets, theirs.targets)
    torch.testing.assert_close(ours.raw[layer], theirs.raw[layer], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.logits, theirs.logits, rtol=1e-4, atol=1e-5)
    assert all(p.requires_grad for p in model.parameters())


def test_fast_copy_leaves_score_and_ablation_cam_to_their_own_copies():
    from vistool.explainers.cam import fast_copy

    model = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    x = torch.zeros(1, 3, 32, 32)
    assert fast_copy(model, "scorecam", ["layer4"], x) is model
    assert fast_copy(model, "ablationcam", ["layer4"], x) is model
