"""The hook API: captured values, gradients, cleanup and model-state restoration."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from vistool import LayerError, preserved_state, record


def hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_captured_output_survives_inplace_relu(tiny_net):
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    expected = tiny_net.conv(x).detach()
    assert (expected < 0).any()
    with record(tiny_net, ["conv", "relu"]) as rec:
        tiny_net(x)
    assert torch.equal(rec["conv"], expected)  # not overwritten by ReLU(inplace=True)
    assert torch.equal(rec["relu"], expected.clamp_min(0))
    assert not rec["conv"].requires_grad


def test_gradient_is_that_of_the_layer_not_of_the_inplace_relu_after_it(tiny_net):
    x = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(2))
    target = 1
    with record(tiny_net, "conv", gradients=True) as rec:
        out = tiny_net(x)
    (grad,) = torch.autograd.grad(out[:, target].sum(), rec.outputs)
    conv = tiny_net.conv(x).detach()
    # d fc[target](mean(relu(conv))) / d conv = w[target, k] / 36 where conv > 0, else 0.
    expected = tiny_net.fc.weight[target].detach().view(1, 2, 1, 1) / 36 * (conv > 0)
    torch.testing.assert_close(grad, expected, rtol=0, atol=1e-7)
    assert all(p.grad is None for p in tiny_net.parameters())


def test_module_called_twice_yields_both_outputs():
    conv = nn.Conv2d(1, 1, 1, bias=False)
    conv.weight.data.fill_(2.0)
    model = nn.Sequential()
    model.add_module("conv", conv)
    model.forward = lambda x: conv(conv(x))  # the same module twice
    x = torch.ones(1, 1, 2, 2)
    with record(model, "conv") as rec:
        model(x)
    first, second = rec.all("conv")
    assert torch.equal(first, torch.full((1, 1, 2, 2), 2.0))
    assert torch.equal(second, torch.full((1, 1, 2, 2), 4.0))
    assert torch.equal(rec["conv"], second)


def test_hooks_removed_after_many_calls_and_after_exceptions():
    model = torchvision.models.resnet18(weights=None).eval()
    before = hook_count(model)
    x = torch.randn(1, 3, 32, 32)
    for _ in range(20):
        with torch.no_grad(), record(model, ["layer3", "layer4"]) as rec:
            model(x)
        assert rec["layer4"].shape == (1, 512, 1, 1)
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(exc)), record(model, ["layer1", "fc"]):
            assert hook_count(model) == before + 2
            raise exc
    with pytest.raises(LayerError), record(model, ["layer1", "nope"]):
        pass
    assert hook_count(model) == before


def test_preserved_state_restores_flags_requires_grad_and_grad(tiny_net):
    tiny_net.train()
    tiny_net.fc.eval()
    tiny_net.conv.weight.requires_grad_(False)
    marker = torch.full_like(tiny_net.fc.weight, 7.0)
    tiny_net.fc.weight.grad = marker
    with pytest.raises(ValueError), preserved_state(tiny_net, eval_mode=True):
        assert not tiny_net.training
        tiny_net.conv.weight.requires_grad_(True)
        tiny_net.fc.weight.grad = None
        tiny_net.train()
        raise ValueError
    assert tiny_net.training and tiny_net.conv.training and not tiny_net.fc.training
    assert not tiny_net.conv.weight.requires_grad
    assert tiny_net.fc.weight.grad is marker
    assert tiny_net.fc.bias.grad is None


def test_record_outputs_follow_request_order(tiny_net):
    x = torch.randn(1, 1, 6, 6)
    with record(tiny_net, ["fc", "conv"]) as rec:
        tiny_net(x)
    assert [t.shape for t in rec.outputs] == [(1, 3), (1, 2, 6, 6)]
    with pytest.raises(KeyError, match="did not run"):
        with record(tiny_net, "conv") as rec:
            pass
        rec["conv"]
