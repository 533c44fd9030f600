"""The sanity check's pieces on tiny hand-made inputs with exact answers: average ranks,
Spearman's rho, SSIM's window and constants, which layers are randomised, how each step is
seeded, what the explainer is given and what comes back."""

from __future__ import annotations

import contextlib
import copy
import io
import math
import sys

import pytest
import torch
from torch import nn

from vistool.core.errors import VistoolError
from vistool.core.zoo import LoadedModel
from vistool.evaluate.sanity import (
    _ranks,
    randomisable_layers,
    randomisation_check,
    spearman,
    ssim,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------
# Ranks and Spearman's rho

def test_ranks_average_ties_per_row_in_float64():
    values = torch.tensor([[3.0, 1.0, 3.0, 2.0], [5.0, 5.0, 5.0, 5.0], [0.0, -1.0, 7.0, 0.0]])
    ranks = _ranks(values)
    assert ranks.dtype == torch.float64
    assert ranks.tolist() == [[3.5, 1.0, 3.5, 2.0], [2.5, 2.5, 2.5, 2.5], [2.5, 1.0, 4.0, 2.5]]


def test_spearman_of_two_pixel_maps_is_plus_or_minus_one():
    # centred ranks (-0.5, 0.5): the norms' product is 0.5, below 1, and still divides
    up = torch.tensor([[[0.0, 1.0]]])
    down = torch.tensor([[[1.0, 0.0]]])
    assert spearman(up, up).tolist() == [1.0]
    assert spearman(up, down).tolist() == [-1.0]
    tied = torch.tensor([[[2.0, 2.0]]])  # no ranking: 0, not NaN
    assert spearman(up, tied).tolist() == [0.0]


def test_spearman_per_pair_with_ties_averaged():
    a = torch.tensor([[[1.0, 2.0], [2.0, 4.0]], [[0.0, 0.0], [1.0, 3.0]]])
    b = torch.tensor([[[2.0, 1.0], [3.0, 3.0]], [[1.0, 2.0], [3.0, 4.0]]])
    rho = spearman(a, b)
    assert rho.dtype == torch.float32 and rho.shape == (2,)
    # pair 0: ranks (1, 2.5, 2.5, 4) and (2, 1, 3.5, 3.5), centred (-1.5, 0, 0, 1.5) and
    # (-0.5, -1.5, 1, 1): dot 2.25 over sqrt(4.5 * 4.5)
    # pair 1: ranks (1.5, 1.5, 3, 4) and (1, 2, 3, 4), centred (-1, -1, 0.5, 1.5) and
    # (-1.5, -0.5, 0.5, 1.5): dot 4.5 over sqrt(4.5 * 5)
    assert rho.tolist() == pytest.approx([0.5, 4.5 / math.sqrt(4.5 * 5)], abs=1e-7)


def test_spearman_and_ssim_return_on_the_maps_device():
    """They compute on the CPU and hand the result back on ``a``'s device: seen without a GPU
    through PyTorch's fake tensors (the FakeTensorMode torch.compile traces with)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        a = torch.zeros(2, 3, 3, device="cuda")
        assert spearman(a, a).device.type == "cuda"
        assert ssim(a, a).device.type == "cuda"


# ---------------------------------------------------------------------------------------
# SSIM

def _checkerboard(t: float) -> torch.Tensor:
    """A 3x3 map of mean 0 and sample variance t²: four +t, four -t and a 0."""
    return t * torch.tensor([[[1.0, -1.0, 1.0], [-1.0, 0.0, -1.0], [1.0, -1.0, 1.0]]])


def test_ssim_constants_scale_with_the_data_range():
    # one 3x3 window; x = 0, y = c: SSIM = C1 / (c² + C1) with C1 = (0.01 · range)²
    zeros = torch.zeros(1, 3, 3)
    assert ssim(zeros, torch.full((1, 3, 3), 0.01)).item() == pytest.approx(0.5, abs=1e-6)
    assert ssim(zeros, torch.full((1, 3, 3), 0.02), data_range=2.0).item() == pytest.approx(
        0.5, abs=1e-6)
    # means 0, var(x) = t², var(y) = cov = 0: SSIM = C2 / (t² + C2) with C2 = (0.03 · range)²
    assert ssim(_checkerboard(0.03), zeros).item() == pytest.approx(0.5, abs=1e-6)
    assert ssim(_checkerboard(0.06), zeros, data_range=2.0).item() == pytest.approx(
        0.5, abs=1e-6)
    assert ssim(_checkerboard(0.06), zeros, data_range=2.0).dtype == torch.float32


@pytest.mark.parametrize(("shape", "window"), [((4, 9), 3), ((9, 4), 3), ((5, 9), 5),
                                               ((6, 6), 5), ((3, 3), 3), ((8, 7), 7)])
def test_ssim_window_is_the_largest_odd_one_that_fits(shape, window):
    from skimage.metrics import structural_similarity

    g = torch.Generator().manual_seed(sum(shape))
    a, b = torch.rand(2, *shape, generator=g), torch.rand(2, *shape, generator=g)
    expected = [structural_similarity(x.numpy(), y.numpy(), win_size=window, data_range=1.0)
                for x, y in zip(a, b)]
    assert ssim(a, b).tolist() == pytest.approx(expected, abs=1e-6)
    scaled = [structural_similarity(2 * x.numpy(), 2 * y.numpy(), win_size=window,
                                    data_range=2.0) for x, y in zip(a, b)]
    assert ssim(2 * a, 2 * b, data_range=2.0).tolist() == pytest.approx(scaled, abs=1e-6)


# ---------------------------------------------------------------------------------------
# Which layers are randomised

class _Scale(nn.Module):
    """A parameter of its own but no ``reset_parameters``: cannot be re-initialised."""

    def __init__(self):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(2))

    def forward(self, x):
        return x * self.gain


class _Block(nn.Module):
    """``reset_parameters`` but no parameters of its own (only its child's)."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(2, 2)

    def reset_parameters(self):
        self.inner.reset_parameters()

    def forward(self, x):
        return self.inner(x)


def test_randomisable_layers_need_own_parameters_and_a_reset():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2, affine=False), _Scale(), _Block(),
                        nn.BatchNorm1d(2))
    assert randomisable_layers(net) == ["4", "3.inner", "0"]


# ---------------------------------------------------------------------------------------
# The cascading randomisation

class _Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(2, 2)
        self.b = nn.Linear(2, 2)


def _recording_explainer():
    """An explainer that records what it is given and returns distinct maps per image that
    depend on both layers' weights and on the targets."""
    calls = []

    def explainer(net, images, targets):
        maps = (images[:, 0] * net.b.weight.sum() + net.a.weight[0, 0]
                + targets[:, None, None].float())
        calls.append({"net": net, "targets": targets, "a": net.a.weight.detach().clone(),
                      "b": net.b.weight.detach().clone(), "maps": maps.detach().clone()})
        return maps

    return explainer, calls


def _reset(layer: nn.Module, seed: int) -> torch.Tensor:
    fresh = copy.deepcopy(layer)
    torch.manual_seed(seed)
    fresh.reset_parameters()
    return fresh.weight.detach()


def _inputs():
    g = torch.Generator().manual_seed(0)
    return torch.rand(3, 1, 3, 3, generator=g), torch.tensor([2, 0, 1])


@pytest.mark.parametrize("seed", [None, 5])
def test_each_step_is_seeded_with_seed_plus_step(seed):
    torch.manual_seed(1)
    net = _Pair()
    images, targets = _inputs()
    explainer, calls = _recording_explainer()
    kwargs = {} if seed is None else {"seed": seed}
    state = torch.get_rng_state()
    result = randomisation_check(net, images, targets, explainer, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's generator is untouched
    base = 0 if seed is None else seed
    assert result.layers == ["b", "a"] and len(calls) == 3
    b0, a1 = _reset(net.b, base), _reset(net.a, base + 1)
    assert torch.equal(calls[0]["a"], net.a.weight) and torch.equal(calls[0]["b"], net.b.weight)
    assert torch.equal(calls[1]["a"], net.a.weight) and torch.equal(calls[1]["b"], b0)
    assert torch.equal(calls[2]["a"], a1) and torch.equal(calls[2]["b"], b0)


def test_the_explainer_gets_the_targets_and_the_first_images_maps_are_kept():
    torch.manual_seed(2)
    net = _Pair()
    images, targets = _inputs()
    explainer, calls = _recording_explainer()
    result = randomisation_check(net, images, targets, explainer)
    assert calls[0]["net"] is net and all(c["net"] is not net for c in calls[1:])
    assert all(c["targets"] is targets for c in calls)
    assert torch.equal(result.maps, torch.stack([c["maps"][0] for c in calls]))
    original = calls[0]["maps"]
    assert torch.equal(result.spearman,
                       torch.stack([spearman(original, c["maps"]) for c in calls[1:]]))
    assert torch.equal(result.ssim, torch.stack([ssim(original, c["maps"]) for c in calls[1:]]))
    assert result.spearman.shape == result.ssim.shape == (2, 3)


def test_a_loaded_model_and_chosen_layers():
    torch.manual_seed(3)
    net = _Pair()
    loaded = LoadedModel(model=net, transform=lambda image: image, classes=None,
                         input_size=(1, 3, 3), mean=(0.0,), std=(1.0,), spec="pair")
    images, targets = _inputs()
    explainer, calls = _recording_explainer()
    result = randomisation_check(loaded, images, targets, explainer)
    assert result.layers == ["b", "a"] and calls[0]["net"] is net
    explainer, calls = _recording_explainer()
    result = randomisation_check(net, images, targets, explainer, layers=("a",))
    assert result.layers == ["a"] and len(calls) == 2
    assert torch.equal(calls[1]["b"], net.b.weight)  # only "a" was randomised
    assert torch.equal(calls[1]["a"], _reset(net.a, 0))


def test_unknown_or_no_layers_are_errors():
    net = _Pair()
    images, targets = _inputs()
    explainer, calls = _recording_explainer()
    with pytest.raises(VistoolError, match=r"^no layer named 'nope' to randomise$"):
        randomisation_check(net, images, targets, explainer, layers=["a", "nope"])
    with pytest.raises(VistoolError, match="no layers with parameters to randomise"):
        randomisation_check(nn.Sequential(nn.ReLU()), images, targets, explainer)
    assert calls == []  # refused before any work


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_each_step_forks_the_generators_of_the_images_device(monkeypatch, device):
    """The re-initialisation draws from forked generators: the CPU's, and the CUDA device's
    too when the images are there (fake CUDA tensors and a recording ``fork_rng`` stand in
    for a GPU)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    calls = []

    class Resettable(nn.Module):  # no parameters; records its re-initialisation
        def reset_parameters(self):
            calls.append("reset")

    @contextlib.contextmanager
    def fork_rng(devices=None, enabled=True, **kwargs):
        calls.append(devices)
        yield

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    net = nn.Sequential(Resettable())
    with FakeTensorMode() if device == "cuda" else contextlib.nullcontext():
        images = torch.rand(2, 1, 3, 3, device=device)
        targets = torch.zeros(2, dtype=torch.long, device=device)
        result = randomisation_check(net, images, targets, lambda n, x, t: x[:, 0],
                                     layers=["0"])
    assert calls == [[images.device] if device == "cuda" else [], "reset"]
    assert result.spearman.device.type == result.ssim.device.type == device


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, where a progress bar may draw."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("kwargs", "shown"), [({}, False), ({"progress": False}, False),
                                               ({"progress": True}, True)])
def test_progress_bar_only_when_asked(monkeypatch, kwargs, shown):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    images, targets = _inputs()
    explainer, _ = _recording_explainer()
    randomisation_check(_Pair(), images, targets, explainer, **kwargs)
    out = terminal.getvalue()
    if not shown:
        assert out == ""
        return
    assert out.startswith("\rsanity:   0%|")
    assert "0/2" in out
    assert out.endswith("\r") and "\n" not in out  # leave=False: the bar is wiped at the end


def test_ssim_refuses_maps_too_small_for_a_window():
    with pytest.raises(VistoolError, match=r"at least 3x3 pixels, got \(2, 5\)"):
        ssim(torch.rand(1, 2, 5), torch.rand(1, 2, 5))
    assert ssim(torch.ones(1, 3, 3), torch.ones(1, 3, 3)).item() == pytest.approx(1.0)
