"""The private inference copy used by Score-CAM: equal outputs, the caller's model untouched,
and the oneDNN rewrite applied where it may be and dropped where it does not match."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from vistool.explainers import inference
from vistool.explainers.inference import inference_copy

needs_onednn = pytest.mark.skipif(
    not inference._onednn_usable(torch.zeros(1)), reason="oneDNN is not available")


def rewritten(net: nn.Module) -> list[inference._OneDnnConv]:
    return [m for m in net.modules() if isinstance(m, inference._OneDnnConv)]


class Branchy(nn.Module):
    """Patterns the rewrite must leave alone or handle: a conv output read twice, a
    broadcast addition, a functional ReLU, and a residual sum."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.c = nn.Conv2d(4, 4, 1)
        self.d = nn.Conv2d(4, 4, 3, padding="same")
        self.offset = nn.Parameter(torch.randn(1, 4, 1, 1))

    def forward(self, x):
        a = self.a(x)
        twice = a * a + a  # read twice: not fused with anything
        b = torch.relu(self.b(twice) + twice)  # residual + functional ReLU: one call
        c = self.c(b) + self.offset  # broadcast: the conv alone is rewritten
        return self.d(c).relu().mean((2, 3))  # string padding: left as it is


@needs_onednn
def test_resnet18_copy_is_fully_rewritten_and_equal():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(3, 3, 64, 64)
    fast = inference_copy(model, fuse=True, sample=x[:1])
    # 20 convolutions: 8 with a residual sum (+ReLU), 9 with a ReLU, 3 downsamples alone.
    fused = rewritten(fast)
    assert len(fused) == 20
    assert sum(m.add for m in fused) == 8 and sum(m.relu for m in fused) == 17
    with torch.no_grad():
        torch.testing.assert_close(fast(x.contiguous(memory_format=torch.channels_last)),
                                   model(x), rtol=1e-4, atol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert type(model.bn1) is nn.BatchNorm2d and type(model.layer1[0].conv2) is nn.Conv2d


@needs_onednn
def test_only_safe_patterns_are_fused():
    torch.manual_seed(0)
    net = Branchy().eval()
    x = torch.randn(2, 3, 9, 9)
    fast = inference_copy(net, fuse=True, sample=x[:1])
    assert sorted((m.relu, m.add) for m in rewritten(fast)) == [
        (False, False), (False, False), (True, True)]
    assert isinstance(fast.d, nn.Conv2d)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-5)


@needs_onednn
def test_a_rewrite_that_does_not_match_is_dropped(monkeypatch):
    original = inference._OneDnnConv.forward
    monkeypatch.setattr(inference._OneDnnConv, "forward",
                        lambda self, *args: original(self, *args) + 1e-3)
    net = Branchy().eval()
    x = torch.randn(2, 3, 9, 9)
    fast = inference_copy(net, fuse=True, sample=x[:1])
    assert not rewritten(fast)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x), rtol=1e-4, atol=1e-5)


def test_untraceable_model_gets_a_plain_copy():
    class Untraceable(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3)

        def forward(self, x):
            y = self.conv(x)
            return y if y.sum() > 0 else -y  # data-dependent: fx cannot trace it

    net = Untraceable().eval()
    x = torch.randn(2, 3, 8, 8)
    fast = inference_copy(net, fuse=True, sample=x[:1])
    assert type(fast) is Untraceable and fast is not net and fast.conv is not net.conv
    with torch.no_grad():
        torch.testing.assert_close(fast(x), net(x))


@needs_onednn
def test_scorecam_is_the_same_with_and_without_the_rewrite(monkeypatch):
    from vistool.explainers.cam import explain

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    fast = explain(model, x, "scorecam", layer="layer3", targets=[1, 4], batch_size=8)
    monkeypatch.setattr(inference, "_onednn_usable", lambda _sample: False)
    plain = explain(model, x, "scorecam", layer="layer3", targets=[1, 4], batch_size=8)
    torch.testing.assert_close(fast.raw["layer3"], plain.raw["layer3"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast.maps, plain.maps, rtol=0, atol=1e-5)


def test_many_forwards_batch_keeps_activations_under_32_mib():
    from vistool.explainers.inference import many_forwards_batch

    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU())
    big = torch.zeros(1, 3, 512, 512)  # 8 MiB of activations per image
    assert many_forwards_batch(net, big, 16) == 4
    assert many_forwards_batch(net, big, 3) == 3
    assert many_forwards_batch(net, torch.zeros(1, 3, 2048, 2048), 16) == 1
    assert many_forwards_batch(net, big.to("meta"), 16) == 16  # not CPU: as asked
    assert all(not m._forward_hooks for m in net.modules())


@needs_onednn
def test_kept_layers_record_what_they_record_on_the_original():
    from vistool.core.hooks import record

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(2, 3, 64, 64)
    keep = ["layer4", "layer1.0.conv1"]  # a block, and a convolution followed by batch norm
    fast = inference_copy(model, fuse=True, sample=x[:1], keep=keep)
    assert all(isinstance(fast.get_submodule(name), inference._Kept) for name in keep)
    # every convolution is rewritten but the kept one, whose batch norm is not folded into it
    kept_conv = fast.get_submodule("layer1.0.conv1").inner
    assert len(rewritten(fast)) == 19 and not rewritten(kept_conv)
    with torch.no_grad(), record(model, keep) as ours, record(fast, keep) as theirs:
        expected, got = model(x), fast(x)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    for name in keep:
        torch.testing.assert_close(theirs[name], ours[name], rtol=1e-4, atol=1e-4)
    assert type(model.layer4) is nn.Sequential and not model.layer4._forward_hooks


def test_nested_kept_layers_get_a_plain_copy():
    from vistool.core.hooks import record

    model = torchvision.models.resnet18(num_classes=5).eval()
    x = torch.randn(1, 3, 32, 32)
    fast = inference_copy(model, fuse=True, sample=x, keep=["layer4", "layer4.1"])
    assert type(fast) is torchvision.models.ResNet and fast is not model
    with torch.no_grad(), record(fast, ["layer4", "layer4.1"]) as rec:
        fast(x)
    assert "layer4" in rec and "layer4.1" in rec
