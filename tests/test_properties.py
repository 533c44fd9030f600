"""Properties over random inputs (hypothesis): layouts map any grid to (N, C, H, W) and back
exactly, and the evaluation metrics keep their invariants (the pointing game under monotone
rescaling of the map, deletion and insertion of a linear model's exact contributions against
their inverse order, bootstrap intervals around the mean)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vistool.core.layout import GridView, detect, grid_view
from vistool.evaluate import bootstrap, box_masks, perturbation_curve, pointing_game

pytestmark = pytest.mark.usefixtures("one_thread")
FAST = settings(max_examples=40, deadline=None)


# ---------------------------------------------------------------------------------------------
# Layouts


@st.composite
def layer_outputs(draw):
    """(view, output, input size): an output laid out as the view says, its values numbered."""
    layout = draw(st.sampled_from(["nchw", "nhwc", "tokens"]))
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    extra = draw(st.integers(0, 2)) if layout == "tokens" else 0
    stride = draw(st.integers(1, 8))
    shape = {"nchw": (n, c, h, w), "nhwc": (n, h, w, c), "tokens": (n, extra + h * w, c)}
    output = torch.arange(math.prod(shape[layout]), dtype=torch.float32).reshape(shape[layout])
    return GridView(layout, (h, w), extra), output, (h * stride, w * stride)


@FAST
@given(layer_outputs())
def test_a_grid_view_maps_each_position_and_back_exactly(case):
    view, output, _ = case
    grid = view.to_grid(output)
    n, h, w = output.shape[0], *view.grid
    c = output.shape[1] if view.layout == "nchw" else output.shape[-1]
    assert grid.shape == (n, c, h, w)
    for i, j in ((0, 0), (h - 1, w - 1), (h // 2, w - 1)):
        if view.layout == "nchw":
            where = output[:, :, i, j]
        elif view.layout == "nhwc":
            where = output[:, i, j, :]
        else:  # row-major grid tokens after the extra ones
            where = output[:, view.extra + i * w + j, :]
        assert torch.equal(grid[:, :, i, j], where)
    assert torch.equal(view.from_grid(grid, output), output)
    stacked = torch.stack([output, -output])  # two leading dims (targets, like gradients)
    assert torch.equal(view.to_grid(stacked, lead=2)[1], -grid)


@FAST
@given(layer_outputs())
def test_detection_finds_a_grid_that_fits_and_names_round_trip(case):
    view, output, size = case
    found = detect(tuple(output.shape), size)
    assert found is not None
    if view.layout == "nchw":  # checked first: a strided (N, C, h, w) output is always nchw
        assert found == view
    h, w = found.grid
    assert 1 <= h <= size[0] and 1 <= w <= size[1]
    named = grid_view("layer", output, size, layout=found.layout)
    assert torch.equal(named.from_grid(named.to_grid(output), output), output)


# ---------------------------------------------------------------------------------------------
# Metrics


@st.composite
def maps_and_boxes(draw):
    """Integer-valued maps (ties happen; strictly monotone maps keep them exactly) and boxes."""
    n, h, w = draw(st.integers(1, 4)), draw(st.integers(2, 10)), draw(st.integers(2, 10))
    values = draw(st.lists(st.integers(0, 12), min_size=n * h * w, max_size=n * h * w))
    maps = torch.tensor(values, dtype=torch.float32).reshape(n, h, w)
    boxes = []
    for _ in range(n):
        x0, y0 = draw(st.integers(0, w - 1)), draw(st.integers(0, h - 1))
        boxes.append((x0, y0, draw(st.integers(x0 + 1, w)), draw(st.integers(y0 + 1, h))))
    return maps, box_masks(torch.tensor(boxes), (h, w)), draw(st.integers(0, 2))


MONOTONE = {"affine": lambda m: 3 * m - 7, "shrink": lambda m: m / 64 + 0.25,
            "cube": lambda m: (m - 5) ** 3, "exp": lambda m: torch.exp(m / 4),
            "sqrt": lambda m: torch.sqrt(m + 0.5) * 100}


@FAST
@given(maps_and_boxes(), st.sampled_from(sorted(MONOTONE)))
def test_pointing_game_is_invariant_to_monotone_rescaling(case, name):
    maps, masks, tolerance = case
    expected = pointing_game(maps, masks, tolerance)
    assert torch.equal(pointing_game(MONOTONE[name](maps), masks, tolerance), expected)
    flipped = pointing_game(-maps, masks, tolerance)  # decreasing: the minima become peaks
    assert torch.equal(flipped, pointing_game(maps.amax() - maps, masks, tolerance))


def _linear(weights: torch.Tensor) -> nn.Module:
    """logits = (w · x, 0): the target's probability is sigmoid(w · x)."""
    net = nn.Sequential(nn.Flatten(), nn.Linear(weights.numel(), 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.zero_()
        net[1].weight[0] = weights.flatten()
    return net.eval()


@FAST
@given(st.integers(1, 3), st.integers(2, 6), st.integers(2, 6), st.integers(1, 12),
       st.integers(0, 2**31 - 1))
def test_deleting_the_exact_contributions_first_beats_their_inverse_order(n, h, w, steps, seed):
    """For a linear model with baseline 0, the map of each pixel's contribution (w · x summed
    over channels) is the best deletion order: after any k pixels the remaining logit is at
    most the one left by deleting any other k pixels: the k least contributing ones (the
    exact inverse ranking) or k random ones. So its deletion curve and AUC are at most the
    others' and its insertion curve and AUC at least."""
    generator = torch.Generator().manual_seed(seed)
    weights = torch.randn(2, h, w, generator=generator)
    images = torch.randn(n, 2, h, w, generator=generator)
    contributions = (images * weights).sum(1)  # (N, H, W)
    random = torch.rand(n, h, w, generator=generator)
    net = _linear(weights)
    for mode, sign in (("deletion", 1), ("insertion", -1)):
        best = perturbation_curve(net, images, contributions, 0, mode, steps, baseline=0.0)
        for other in (-contributions, random):
            worse = perturbation_curve(net, images, other, 0, mode, steps, baseline=0.0)
            assert (sign * (worse.scores - best.scores) >= -1e-6).all(), mode
            assert (sign * (worse.auc - best.auc) >= -1e-6).all(), mode


finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@FAST
@given(st.lists(finite, min_size=1, max_size=60), st.lists(st.integers(0, 59), max_size=5),
       st.integers(0, 1000))
def test_bootstrap_interval_holds_the_mean_and_nans_are_left_out(values, holes, seed):
    clean = torch.tensor(values, dtype=torch.float32)
    summary = bootstrap(clean, resamples=200, seed=seed)
    lo, hi = summary["ci95"]
    scale = 1e-9 * max(1.0, float(clean.abs().max()))
    assert lo - scale <= summary["mean"] <= hi + scale
    assert summary["mean"] == pytest.approx(float(np.mean(np.float64(values))), rel=1e-9,
                                            abs=scale)
    assert summary["n"] == len(values)
    with_nans = clean.tolist()
    for i in sorted(holes, reverse=True):
        with_nans.insert(min(i, len(with_nans)), math.nan)
    assert bootstrap(torch.tensor(with_nans), resamples=200, seed=seed) == summary
