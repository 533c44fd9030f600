"""The faithfulness metrics' pieces on tiny hand-made inputs with exact answers: what the
baselines are, the order of removal, which batches reach the model, the Scorer's private
copy and its mode, the progress bar, the devices of the results, and the imputation's
starting point, stopping rule and noise (against a conjugate-gradient reference written
out with the explicit matrix)."""

from __future__ import annotations

import io
import math
import sys
import threading

import numpy as np
import pytest
import torch
from torch import nn

from vistool.core.zoo import LoadedModel
from vistool.evaluate.faithfulness import (
    Scorer,
    _targets,
    baseline_images,
    confidence_change,
    impute,
    perturbation_curve,
    removal_ranks,
    road_curve,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _prob(logit: float) -> float:
    return 1 / (1 + math.exp(-logit))


class _Sum(nn.Module):
    """Logits (sum of the pixels, 0): the target 0's probability is sigmoid(sum); no
    parameters, so it runs on any device. With ``shift`` it adds 100 in training mode
    (a model whose output says which mode it ran in)."""

    def __init__(self, shift: bool = False):
        super().__init__()
        self.shift = shift

    def forward(self, x):
        s = x.flatten(1).sum(1)
        if self.shift and self.training:
            s = s + 100
        return torch.stack([s, torch.zeros_like(s)], 1)


class _Logged(_Sum):
    """A :class:`_Sum` that records the batch size of every call; the lock makes it
    impossible to copy, so a Scorer runs the caller's model itself."""

    def __init__(self, shift: bool = False):
        super().__init__(shift)
        self.lock = threading.Lock()
        self.calls: list[int] = []

    def forward(self, x):
        self.calls.append(x.shape[0])
        return super().forward(x)


# ---------------------------------------------------------------------------------------
# Baselines, ranks, targets

def test_baseline_images_defaults_and_mean_per_image_and_channel():
    images = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5)
    assert torch.equal(baseline_images(images), torch.zeros_like(images))  # constant 0
    assert torch.equal(baseline_images(images, "constant"), torch.zeros_like(images))
    assert torch.equal(baseline_images(images, "constant", value=0.5),
                       torch.full_like(images, 0.5))
    mean = baseline_images(images, "mean")
    assert mean.shape == images.shape
    # image n, channel c holds 60n + 20c + 0..19: its mean is 60n + 20c + 9.5
    expected = torch.tensor([[60.0 * n + 20 * c + 9.5 for c in range(3)] for n in range(2)])
    assert torch.equal(mean, expected[:, :, None, None].expand(2, 3, 4, 5))


def test_unknown_baseline_lists_the_choices():
    with pytest.raises(ValueError) as error:
        baseline_images(torch.zeros(1, 1, 2, 2), "noise")
    assert str(error.value) == ("unknown baseline 'noise'; choose one of constant, blur, mean, "
                                "a number or a tensor")


def test_removal_ranks_break_ties_in_reading_order_both_ways():
    # 25 pixels with ties: long enough that an unstable sort reorders them
    maps = torch.zeros(1, 5, 5)
    maps.view(-1)[[3, 17]] = 1.0
    maps.view(-1)[[8, 20]] = -1.0
    top = [3, 17] + [p for p in range(25) if p not in (3, 17, 8, 20)] + [8, 20]
    ranks = removal_ranks(maps)
    assert ranks.dtype == torch.int64
    assert ranks[0].tolist() == [top.index(p) for p in range(25)]
    bottom = [8, 20] + [p for p in range(25) if p not in (3, 17, 8, 20)] + [3, 17]
    assert removal_ranks(maps, descending=False)[0].tolist() == [bottom.index(p)
                                                                 for p in range(25)]


def test_removal_ranks_and_targets_stay_on_the_maps_device():
    """Seen without a GPU through PyTorch's fake tensors: a CPU tensor mixed in fails."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        maps = torch.zeros(2, 3, 3, device="cuda")
        assert removal_ranks(maps).device.type == "cuda"
    images = torch.zeros(2, 1, 3, 3, device="meta")
    assert _targets(images, 1).device.type == "meta"
    assert _targets(images, [0, 1]).device.type == "meta"


# ---------------------------------------------------------------------------------------
# The Scorer: its batch, its copy, the model's mode

def test_scorer_batch_is_the_batch_size_given_default_64():
    images = torch.zeros(3, 1, 2, 2)
    assert Scorer(_Sum(), images).batch == 64
    assert Scorer(_Sum(), images, batch_size=40).batch == 40


def test_scorer_takes_a_loaded_model():
    net = _Sum()
    loaded = LoadedModel(model=net, transform=lambda image: image, classes=None,
                         input_size=(1, 2, 2), mean=(0.0,), std=(1.0,), spec="test")
    scorer = Scorer(loaded, torch.zeros(1, 1, 2, 2))
    assert scorer.net is net
    images = torch.tensor([[[[0.5, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [0.0, 0.0]]]])
    assert scorer(images, torch.tensor([0, 1])).tolist() == pytest.approx(
        [_prob(0.5), 1 - _prob(2.0)], abs=1e-7)


def test_scorer_copies_the_model_in_eval_mode_and_leaves_it_in_training_mode():
    net = _Sum(shift=True).train()
    scorer = Scorer(net, torch.zeros(1, 1, 2, 2))
    assert scorer.fast is not net  # a private copy
    images = torch.full((2, 1, 2, 2), 0.25)
    assert scorer(images, torch.tensor([0, 0])).tolist() == pytest.approx([_prob(1.0)] * 2,
                                                                          abs=1e-7)
    assert net.training


def test_scorer_runs_a_model_it_cannot_copy_in_eval_mode_and_restores_it():
    net = _Logged(shift=True).train()
    scorer = Scorer(net, torch.zeros(1, 1, 2, 2))
    assert scorer.fast is net
    images = torch.full((2, 1, 2, 2), 0.25)
    assert scorer(images, torch.tensor([0, 1])).tolist() == pytest.approx(
        [_prob(1.0), 1 - _prob(1.0)], abs=1e-7)
    assert net.training


def test_scoring_a_copy_leaves_the_callers_model_in_its_mode():
    """While the private copy runs, the caller's model is not switched to eval mode (seen
    from a hook: copies of a module carry its hooks)."""
    net = nn.Sequential(nn.Identity(), _Sum()).train()
    seen = []
    net[0].register_forward_hook(lambda *_: seen.append(net.training))
    scorer = Scorer(net, torch.zeros(1, 1, 2, 2))
    seen.clear()
    assert scorer(torch.zeros(1, 1, 2, 2), torch.tensor([0])).tolist() == [0.5]
    assert seen == [True]


def _conv_bn_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([0.5, -0.25]))
        net[1].running_var.copy_(torch.tensor([2.0, 0.5]))
        net[1].weight.copy_(torch.tensor([1.5, -0.5]))
        net[1].bias.copy_(torch.tensor([0.1, 0.2]))
    return net.eval()


def test_scorer_copy_is_fused_and_built_from_one_image():
    net = _conv_bn_net()
    sizes = []
    net[5].register_forward_hook(lambda _m, args, _out: sizes.append(args[0].shape[0]))
    images = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    scorer = Scorer(net, images)
    assert sizes and set(sizes) == {1}  # building the copy runs single images only
    kinds = {type(m) for m in scorer.fast.modules()}
    assert nn.BatchNorm2d not in kinds  # folded into the convolution
    if torch.backends.mkldnn.is_available():  # conv + ReLU as one packed oneDNN call
        assert nn.Conv2d not in kinds
    targets = torch.tensor([0, 1, 2])
    with torch.no_grad():
        expected = net(images).softmax(1).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(scorer(images, targets), expected, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# What reaches the model: batches

def test_curve_batches_cover_every_perturbed_image_once_in_order():
    net = _Logged()
    images = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.5, 0.5], [0.5, 0.5]]],
                           [[[-1.0, 0.0], [0.0, 1.0]]]])
    maps = torch.tensor([[[0.1, 0.9], [0.5, 0.7]], [[1.0, 0.0], [0.0, 0.0]],
                         [[0.0, 0.0], [0.0, 1.0]]])
    curve = perturbation_curve(net, images, maps, targets=0, steps=4, baseline=0.0,
                               batch_size=4)
    assert net.calls == [1, 4, 4, 4, 3]  # one image measures the activations, then 15 in 4s
    removal = [[2.0, 4.0, 3.0, 1.0], [0.5] * 4, [1.0, -1.0, 0.0, 0.0]]
    expected = [[_prob(sum(r) - sum(r[:k])) for k in range(5)] for r in removal]
    torch.testing.assert_close(curve.scores, torch.tensor(expected), atol=1e-6, rtol=0)
    assert curve.mode == "deletion"


def test_curve_defaults_24_steps_in_batches_of_64():
    net = _Logged()
    images, maps = torch.zeros(3, 1, 2, 2), torch.zeros(3, 2, 2)
    curve = perturbation_curve(net, images, maps, targets=0)
    assert net.calls == [1, 64, 11]  # 3 x 25 points
    assert curve.fractions.tolist() == pytest.approx([k / 24 for k in range(25)])
    assert curve.scores.tolist() == [[0.5] * 25] * 3


def test_confidence_change_batches():
    net = _Logged()
    images = torch.ones(5, 1, 1, 2)
    confidence_change(net, images, torch.ones(5, 1, 2), 0, batch_size=2)
    assert net.calls == [1, 2, 2, 1, 2, 2, 1]  # the images, then the masked images
    net = _Logged()
    confidence_change(net, torch.ones(65, 1, 1, 1), torch.ones(65, 1, 1), 0)
    assert net.calls == [1, 64, 1, 64, 1]


def test_confidence_unchanged_is_no_drop_and_no_increase():
    net = _Logged()
    images = torch.tensor([[[[1.0, 2.0]]], [[[1.0, 2.0]]]])
    maps = torch.tensor([[[1.0, 1.0]], [[1.0, 0.5]]])  # the same image; a lower logit
    drop, increase = confidence_change(net, images, maps, 0)
    assert increase.tolist() == [0.0, 0.0]
    y = _prob(3.0)
    assert drop.tolist() == pytest.approx([0.0, (y - _prob(2.0)) / y], abs=1e-6)


def test_confidence_change_takes_maps_of_another_dtype():
    """float64 maps make float32 images for a float32 model."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(2, 2))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
        net[1].bias.zero_()
    images = torch.ones(1, 1, 1, 2)
    drop, increase = confidence_change(net, images, torch.tensor([[[1.0, 0.0]]],
                                                                 dtype=torch.float64), 0)
    y = _prob(2.0)
    assert drop.tolist() == pytest.approx([(y - _prob(1.0)) / y], abs=1e-6)
    assert increase.tolist() == [0.0]


def test_road_batches():
    net = _Logged()
    images, maps = torch.ones(2, 1, 2, 2), torch.arange(8.0).view(2, 2, 2)
    curve = road_curve(net, images, maps, 0, percentages=(0.5,), noise=0.0, batch_size=3)
    assert net.calls == [1, 3, 1]
    torch.testing.assert_close(curve.scores, torch.full((2, 2), _prob(4.0)), atol=1e-5,
                               rtol=0)
    net = _Logged()
    road_curve(net, torch.ones(7, 1, 2, 2), torch.zeros(7, 2, 2), 0, noise=0.0)
    assert net.calls == [1, 64, 6]  # 7 x 10 points


# ---------------------------------------------------------------------------------------
# Defaults of the curves

def test_deletion_removes_to_zero_by_default():
    w = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        w[1].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]))
        w[1].bias.zero_()
    image = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])  # a blur of it is not 0
    heat = torch.tensor([[[1.0, 0.0], [0.0, 0.5]]])
    curve = perturbation_curve(w, image, heat, 0, steps=4)
    assert curve.mode == "deletion"
    assert curve.scores[0].tolist() == pytest.approx(
        [_prob(12.0), _prob(11.0), _prob(5.0), _prob(3.0), 0.5], abs=1e-6)


def test_road_defaults_seed_0_noise_in_the_images_dtype():
    """Pixel 5 of a constant image is the logit; once removed it is imputed back to the
    constant plus the seeded noise of that pixel, drawn in float64 for float64 images."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 2)).double()
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.zero_()
        net[1].weight[0, 5] = 1.0
    image = torch.ones(1, 1, 4, 4, dtype=torch.float64)
    image.view(-1)[5] = 4.0
    heat = torch.zeros(1, 4, 4)
    heat.view(-1)[5] = 1.0  # the first to go
    curve = road_curve(net, image, heat, 0, percentages=(0.5,))
    jitter = 0.01 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0),
                                dtype=torch.float64)
    assert curve.mode == "road-morf"
    assert curve.scores[0].tolist() == pytest.approx(
        [_prob(4.0), _prob(1.0 + jitter.view(-1)[5].item())], abs=1e-6)


# ---------------------------------------------------------------------------------------
# Progress bars

class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, where a progress bar may draw."""

    def isatty(self) -> bool:
        return True


def _stderr(monkeypatch) -> io.StringIO:
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    return terminal


def test_progress_bars_name_the_curve_and_vanish(monkeypatch):
    images, maps = torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2)
    err = _stderr(monkeypatch)
    perturbation_curve(_Sum(), images, maps, 0, steps=2, progress=True)
    out = err.getvalue()
    assert "deletion" in out and "\n" not in out and out.endswith("\r")  # leave=False
    err = _stderr(monkeypatch)
    road_curve(_Sum(), images, maps, 0, "lerf", percentages=(0.5,), progress=True)
    out = err.getvalue()
    assert "road-lerf" in out and "\n" not in out and out.endswith("\r")


def test_no_progress_bar_unless_asked(monkeypatch):
    images, maps = torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2)
    err = _stderr(monkeypatch)
    perturbation_curve(_Sum(), images, maps, 0, steps=2)
    perturbation_curve(_Sum(), images, maps, 0, steps=2, progress=False)
    road_curve(_Sum(), images, maps, 0, percentages=(0.5,))
    road_curve(_Sum(), images, maps, 0, percentages=(0.5,), progress=False)
    assert err.getvalue() == ""


def test_no_progress_bar_when_stderr_is_not_a_terminal(monkeypatch):
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    perturbation_curve(_Sum(), torch.zeros(1, 1, 2, 2), torch.zeros(1, 2, 2), 0, steps=2,
                       progress=True)
    assert err.getvalue() == ""


# ---------------------------------------------------------------------------------------
# Devices

def test_curves_are_on_the_images_device_with_maps_moved_there():
    """Shape-only tensors on the meta device: a tensor left on the CPU shows."""
    images = torch.zeros(2, 1, 2, 2, device="meta")
    for maps in (torch.zeros(2, 2, 2, device="meta"), torch.zeros(2, 2, 2)):
        curve = perturbation_curve(_Sum(), images, maps, torch.tensor([0, 1]), steps=2,
                                   batch_size=3)
        assert curve.fractions.device.type == "meta"
        assert curve.scores.device.type == "meta" and curve.scores.shape == (2, 3)
        assert curve.auc.device.type == "meta"


# ---------------------------------------------------------------------------------------
# Imputation

def test_impute_default_noise_is_gaussian_of_std_001():
    image = torch.full((1, 1, 3, 3), 2.0)
    removed = torch.zeros(1, 1, 3, 3, dtype=torch.bool)
    removed[0, 0, 1, 1] = True  # imputed back to 2 from its constant neighbours
    torch.manual_seed(7)
    filled = impute(image, removed)
    torch.manual_seed(7)
    noise = torch.randn(image.shape)
    expected = image.clone()
    expected[0, 0, 1, 1] = 2.0 + 0.01 * noise[0, 0, 1, 1]
    torch.testing.assert_close(filled, expected, atol=1e-6, rtol=0)


def test_impute_starts_from_the_half_resolution_solution_from_16_pixels():
    """With a tolerance any start meets, the solver returns where it starts: from 16 pixels
    on, each removed pixel holds the mean of the known pixels of its 2x2 block (0 where
    the block is all removed); below 16 pixels on a side, 0."""
    tol = 1e6
    image = torch.arange(256.0).view(1, 1, 16, 16)
    removed = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    removed[0, 0, 0, 0] = True  # block of 1, 16, 17
    removed[0, 0, 4:6, 6:8] = True  # a whole block
    removed[0, 0, 9, 9] = True  # block of 136, 137, 152
    out = impute(image, removed, noise=0.0, tol=tol)
    expected = image.clone()
    expected[0, 0, 0, 0] = 34 / 3
    expected[0, 0, 4:6, 6:8] = 0.0
    expected[0, 0, 9, 9] = 425 / 3
    torch.testing.assert_close(out, expected, atol=1e-4, rtol=0)
    wide = torch.arange(64.0).view(1, 1, 4, 16)  # 4 rows: no half-resolution start
    hole = torch.zeros(1, 1, 4, 16, dtype=torch.bool)
    hole[0, 0, 0, 0] = True
    expected = wide.clone()
    expected[0, 0, 0, 0] = 0.0
    torch.testing.assert_close(impute(wide, hole, noise=0.0, tol=tol), expected)


def test_impute_from_the_half_resolution_start_solves_the_neighbour_equations():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 2, 16, 20, generator=generator)
    removed = torch.rand(2, 1, 16, 20, generator=generator) < 0.4
    removed[1, :, 2:12, 3:15] = True  # a solid hole
    filled = impute(images, removed, noise=0.0)
    known = ~removed.expand_as(images)
    assert torch.equal(filled[known], images[known])
    kernel = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    kernel = kernel.expand(2, 1, 3, 3)
    conv = torch.nn.functional.conv2d
    mean = conv(filled, kernel, padding=1, groups=2) / conv(torch.ones_like(filled), kernel,
                                                            padding=1, groups=2)
    assert (mean - filled).abs()[~known].max() < 1e-4
    flat = torch.full((1, 1, 16, 16), 0.3)
    hole = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    hole[0, 0, 3:13, 2:11] = True
    torch.testing.assert_close(impute(flat, hole, noise=0.0), flat)


# The conjugate-gradient reference: the system written out as a matrix, in float64.
_KERNEL = np.array([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]],
                   np.float32).astype(np.float64)  # the solver's float32 constants


def _system(image: np.ndarray, removed: np.ndarray):
    """A x = b for the removed pixels: each is the kernel-weighted mean of its neighbours
    inside the image."""
    h, w = image.shape
    index = {p: i for i, p in enumerate(zip(*np.nonzero(removed)))}
    a, b = np.zeros((len(index), len(index))), np.zeros(len(index))
    for (y, x), i in index.items():
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                v, u = y + dy, x + dx
                if (dy or dx) and 0 <= v < h and 0 <= u < w:
                    k = _KERNEL[dy + 1, dx + 1]
                    a[i, i] += k
                    if (v, u) in index:
                        a[i, index[v, u]] -= k
                    else:
                        b[i] += k * image[v, u]
    return a, b, index


def _iterates(image: np.ndarray, removed: np.ndarray, steps: int):
    """Textbook conjugate gradients from 0: the filled image after each step, the squared
    residual of each, and b·b."""
    a, b, index = _system(image, removed)
    x, r = np.zeros_like(b), b.copy()
    p, rr = r.copy(), r @ r
    xs, rrs = [x.copy()], [rr]
    for _ in range(steps):
        ap = a @ p
        alpha = rr / max(p @ ap, 1e-30)
        x, r = x + alpha * p, r - alpha * ap
        rr_new = r @ r
        p, rr = r + rr_new / max(rr, 1e-30) * p, rr_new
        xs.append(x.copy())
        rrs.append(rr)
    filled = []
    for x in xs:
        out = image.copy()
        for (y, u), i in index.items():
            out[y, u] = x[i]
        filled.append(out)
    return filled, np.array(rrs), b @ b


def _stop(rrs: list[np.ndarray], bbs: list[float], tol: float, budget: int) -> int:
    """The step the solver stops at: the first multiple of 8 where every image's squared
    residual is at most tol² b·b, else the budget."""
    for step in range(0, budget, 8):
        if all(rr[step] <= tol ** 2 * bb for rr, bb in zip(rrs, bbs)):
            return step
    return budget


def _seeded_problem(scale: float = 10.0):
    generator = torch.Generator().manual_seed(1)
    image = torch.rand(8, 8, generator=generator, dtype=torch.float64) * scale
    removed = torch.rand(8, 8, generator=generator) > 0.15
    return image.numpy(), removed.numpy()


def _check_stops(images: list[np.ndarray], removed: list[np.ndarray], tol: float) -> int:
    budget = 4 * max(images[0].shape) + 10
    runs = [_iterates(i, r, budget) for i, r in zip(images, removed)]
    step = _stop([run[1] for run in runs], [run[2] for run in runs], tol, budget)
    out = impute(torch.tensor(np.stack(images))[:, None],
                 torch.tensor(np.stack(removed))[:, None], noise=0.0, tol=tol)
    for n, run in enumerate(runs):
        np.testing.assert_allclose(out[n, 0].numpy(), run[0][step], rtol=0, atol=1e-9)
    return step


@pytest.mark.parametrize(("tol", "step"), [(1.0, 0), (0.1, 8), (0.05, 16)])
def test_impute_stops_at_the_first_check_within_tol(tol, step):
    """Checked every 8 steps: relative residuals 1, ... 0.136 (step 7), 0.091 (8),
    0.060 (9), ... 0.0017 (16) on this problem; tol 1 stops at once (residual = b)."""
    image, removed = _seeded_problem()
    assert _check_stops([image], [removed], tol) == step


def test_impute_stopping_rule_is_per_image():
    """A second image of one removed pixel and b·b 1e4 (or 1e-4) converges in one step and
    must not loosen (or tighten) the first one's rule: that stops at step 16 for 0.05."""
    image, removed = _seeded_problem()
    single = np.zeros((8, 8), bool)
    single[3, 3] = True
    for value in (100.0, 0.01):
        constant = np.full((8, 8), value)
        assert _check_stops([image, constant], [removed, single], 0.05) == 16


def test_impute_step_budget_counts_the_longer_side():
    """tol 0 never stops: 4 * 15 + 10 = 70 steps for 15 x 3 pixels, 0.004 away from the
    result after 22."""
    generator = torch.Generator().manual_seed(0)
    image = (torch.rand(15, 3, generator=generator, dtype=torch.float64) * 10).numpy()
    removed = np.ones((15, 3), bool)
    removed[0, 0] = False
    assert _check_stops([image], [removed], 0.0) == 70
