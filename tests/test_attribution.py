"""Attributions through captum: exact values on a linear model, state restoration, seeds."""

from __future__ import annotations

import pytest
import torch
from conftest import save_tiny_shapes_checkpoint
from torch import nn

from vistool import TargetError, VistoolError
from vistool.explainers.attribution import ATTRIBUTION_METHODS, attribute


def linear_model() -> nn.Module:
    """score_c = sum(W_c * x): gradients are W_c, IG from zero is W_c * x."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3, bias=False))
    return model.eval()


def test_saliency_and_ig_exact_on_a_linear_model():
    model = linear_model()
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(1))
    weight = model[1].weight.detach().view(3, 2, 4, 4)
    sal = attribute(model, x, "saliency", targets=[0, 2])
    torch.testing.assert_close(sal.raw, torch.stack([weight[0], weight[2]]))
    expected_map = torch.stack([weight[0], weight[2]]).abs().amax(1)
    lo = expected_map.amin((1, 2), keepdim=True)
    hi = expected_map.amax((1, 2), keepdim=True)
    torch.testing.assert_close(sal.maps, (expected_map - lo) / (hi - lo))
    ig = attribute(model, x, "ig", targets=1, steps=16)
    torch.testing.assert_close(ig.raw, weight[1] * x, rtol=1e-4, atol=1e-6)
    assert ig.targets.tolist() == [1, 1]


def test_occlusion_exact_on_a_linear_model():
    model = linear_model()
    x = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(2))
    result = attribute(model, x, "occlusion", targets=0, window=2, stride=2)
    # Zeroing a 2x2 patch (all channels) drops the score by its contribution sum(W * x);
    # captum spreads that drop over the patch's pixels (each pixel is in one patch).
    contrib = (model[1].weight.view(3, 2, 4, 4)[0] * x[0]).sum(0)
    patches = contrib.reshape(2, 2, 2, 2).sum((1, 3))
    expected = patches.repeat_interleave(2, 0).repeat_interleave(2, 1)
    torch.testing.assert_close(result.raw[0, 0], expected, rtol=1e-5, atol=1e-6)


def test_smoothgrad_is_seeded():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval()
    x = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    first = attribute(model, x, "saliency", smooth=4, seed=7)
    again = attribute(model, x, "saliency", smooth=4, seed=7)
    other = attribute(model, x, "saliency", smooth=4, seed=8)
    plain = attribute(model, x, "saliency")
    assert torch.equal(first.raw, again.raw)
    assert not torch.equal(first.raw, other.raw)
    assert not torch.equal(first.raw, plain.raw)


@pytest.mark.parametrize("method", ATTRIBUTION_METHODS)
def test_every_method_restores_the_model(method):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                          nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    model.train()
    model[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 8, 8)
    result = attribute(model, x, method, layer="2", window=4, stride=4, steps=4)
    assert result.maps.shape == (2, 8, 8)
    assert result.raw.shape == (2, 3, 8, 8)
    assert float(result.maps.min()) >= 0
    assert float(result.maps.max()) <= 1
    with pytest.raises(TargetError):
        attribute(model, x, method, targets=3, layer="2")
    assert model.training
    assert not model[0].weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert model[1].inplace and model[3].inplace
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_method_and_unsupported_smoothing():
    model = linear_model()
    x = torch.zeros(1, 2, 4, 4)
    with pytest.raises(VistoolError, match="unknown attribution method 'saliancy'"):
        attribute(model, x, "saliancy")
    with pytest.raises(VistoolError, match="not available for guided-gradcam"):
        attribute(nn.Sequential(nn.Conv2d(2, 2, 1), nn.Flatten(), nn.Linear(32, 2)), x,
                  "guided-gradcam", layer="0", smooth=2)


def test_progress_bar_on_stderr_with_the_same_attributions(capfd, terminal):
    terminal()
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2)).eval()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(4))
    quiet = attribute(model, x, "ig", smooth=2, steps=8, batch_size=4, seed=5)
    assert capfd.readouterr().err == ""
    shown = attribute(model, x, "ig", smooth=2, steps=8, batch_size=4, seed=5, progress=True)
    err = capfd.readouterr().err
    assert torch.equal(shown.raw, quiet.raw)
    assert torch.equal(shown.maps, quiet.maps)
    assert "ig:" in err
    assert "/16" in err  # 8 steps x 2 noisy samples per image


@pytest.mark.parametrize(("method", "smooth", "total"),
                         [("ig", 0, 6), ("ig", 3, 18), ("occlusion", 0, 1 + 3 * 2),
                          ("occlusion", 2, 2 * (1 + 3 * 2)), ("saliency", 4, 4)])
def test_progress_bar_counts_every_forward_pass(monkeypatch, terminal, method, smooth, total):
    from tqdm import tqdm

    from vistool.explainers import attribution

    bars = []

    class Recording(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(attribution, "tqdm", Recording)
    terminal()
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    x = torch.randn(3, 3, 10, 7)  # occlusion 4x4 patches, stride 3: 3 x 2 positions
    attribute(model, x, method, smooth=smooth, steps=6, window=4, stride=3, batch_size=3,
              progress=True)
    assert [(bar.n, bar.total) for bar in bars] == [(total, total)]
    attribute(model, x, "saliency", progress=True)  # fast: no bar
    assert bars[-1].disable
    assert bars[-1].n == 0


def test_attribute_cli_shows_progress_unless_json(capsys, terminal, tmp_path):
    from PIL import Image

    from vistool.cli import main

    ckpt = save_tiny_shapes_checkpoint(tmp_path / "best.safetensors")
    image = tmp_path / "one.png"
    Image.fromarray(torch.randint(0, 255, (32, 32, 3), dtype=torch.uint8).numpy()).save(image)
    argv = ["attribute", "--model", str(ckpt), "--method", "ig", "--steps", "4", "--smooth",
            "2", str(image)]
    terminal()
    assert main([*argv, "--out", str(tmp_path / "shown")]) == 0
    assert "ig:" in capsys.readouterr().err
    assert main([*argv, "--out", str(tmp_path / "quiet"), "--json"]) == 0
    assert "ig:" not in capsys.readouterr().err
