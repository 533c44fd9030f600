"""Localisation and complexity metrics on tiny hand-made maps with exact answers: the
pointing game's default tolerance and one-pixel dilation, relevance mass (the energy pointing
game) and IoU at their boundaries, sparseness, masks as boxes and as non-bool arrays, the
empty-mask warning's text and the line it points at, and where the results live."""

from __future__ import annotations

import inspect
import math
import warnings
from pathlib import Path

import pytest
import torch

from vistool.evaluate.localisation import (
    EmptyMaskWarning,
    _check,
    _dilate,
    box_masks,
    default_tolerance,
    iou,
    pointing_game,
    relevance_mass,
    sparseness,
)

pytestmark = pytest.mark.usefixtures("one_thread")

META = torch.device("meta")  # a second device kind: mixing it with CPU tensors fails


def _mask(rows: list[str]) -> torch.Tensor:
    """A bool (1, H, W) mask drawn with '#' (inside) and '.' (outside)."""
    return torch.tensor([[[c == "#" for c in row] for row in rows]])


# ---------------------------------------------------------------------------------------
# Inputs: shapes, dtypes, devices

def test_maps_and_masks_must_both_be_three_dimensional():
    flat = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=r"^maps and masks must both be \(N, H, W\); "
                                         r"got \(2, 3\) and \(2, 3\)$"):
        pointing_game(flat, flat.bool())
    with pytest.raises(ValueError, match=r"got \(1, 2, 3\) and \(1, 3, 2\)$"):
        relevance_mass(torch.zeros(1, 2, 3), torch.zeros(1, 3, 2, dtype=torch.bool))


def test_masks_become_bool_on_the_maps_device():
    maps, masks = _check(torch.zeros(1, 2, 2, dtype=torch.float64, device=META),
                         torch.tensor([[[0, 255], [0, 0]]], dtype=torch.uint8))
    assert masks.device.type == "meta" and masks.dtype == torch.bool
    assert maps.dtype == torch.float32


def test_a_0_255_mask_counts_its_nonzero_pixels():
    # as read from a PNG: 0 and 255, not bool
    png = torch.tensor([[[255, 255], [0, 0]]], dtype=torch.uint8)
    maps = torch.tensor([[[1.0, 0.0], [1.0, 2.0]]])
    assert relevance_mass(maps, png).tolist() == [0.25]
    # the region at half the maximum: the three pixels >= 1; the union: all four pixels
    assert iou(maps, png).tolist() == [0.25]
    assert pointing_game(maps, png).tolist() == [0.0]


def test_box_masks_follow_the_boxes_device():
    boxes = torch.tensor([[1, 0, 3, 2], [0, 1, 1, 3]])
    masks = box_masks(boxes, (3, 4))
    assert masks.dtype == torch.bool and masks.shape == (2, 3, 4)
    assert masks.int().tolist() == [[[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]],
                                    [[0, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0]]]
    on_meta = box_masks(boxes.to(META), (3, 4))
    assert on_meta.device.type == "meta" and on_meta.shape == (2, 3, 4)


def test_sparseness_stays_on_the_maps_device():
    out = sparseness(torch.zeros(2, 3, 3, device=META))
    assert out.device.type == "meta" and out.shape == (2,)


def test_dilation_stays_on_the_masks_device():
    """Seen without a GPU through fake CUDA tensors (PyTorch's FakeTensorMode), on which
    mixing devices fails as on a real GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        masks = torch.zeros(2, 4, 4, dtype=torch.bool, device="cuda")
        assert _dilate(masks, 1).device.type == "cuda"


# ---------------------------------------------------------------------------------------
# Pointing game

def test_pointing_game_default_tolerance_is_zero_and_one_pixel_reaches_the_neighbours():
    mask = _mask(["##..",
                  "##..",
                  "....",
                  "...."])
    beside = torch.zeros(1, 4, 4)
    beside[0, 0, 2] = 1.0  # one pixel right of the mask
    diagonal = torch.zeros(1, 4, 4)
    diagonal[0, 2, 2] = 1.0  # sqrt(2) from the mask's corner
    assert pointing_game(beside, mask).tolist() == [0.0]
    assert pointing_game(beside, mask, tolerance=1).tolist() == [1.0]
    assert pointing_game(diagonal, mask, tolerance=1).tolist() == [0.0]
    assert pointing_game(diagonal, mask, tolerance=2).tolist() == [1.0]


def test_tolerance_zero_leaves_the_masks_as_they_are():
    masks = _mask(["#.", ".."])
    assert _dilate(masks, 0) is masks
    assert _dilate(masks, -1) is masks
    assert _dilate(masks, 1).tolist() == [[[True, True], [True, False]]]


def test_a_constant_map_is_a_miss_whatever_the_other_maps():
    # each map's own extremes decide whether it is constant: a constant map between the
    # batch's minimum (0) and maximum (2), with every pixel inside the mask, is still a miss
    maps = torch.tensor([[[1.0, 1.0], [1.0, 1.0]], [[0.0, 2.0], [0.0, 0.0]]])
    full = torch.ones(2, 2, 2, dtype=torch.bool)
    assert pointing_game(maps, full).tolist() == [0.0, 1.0]


# ---------------------------------------------------------------------------------------
# Relevance mass (the energy pointing game) and IoU

def test_relevance_mass_of_a_map_summing_to_one():
    maps = torch.tensor([[[0.25, 0.5], [0.25, 0.0]]])
    mask = _mask(["#.", ".."])
    assert relevance_mass(maps, mask).tolist() == [0.25]
    assert relevance_mass(torch.tensor([[[1.0, -1.0], [0.0, 0.0]]]), mask).tolist() == [0.0]


def test_iou_thresholds_each_map_at_its_own_maximum():
    maps = torch.tensor([[[1.0, 0.6], [0.0, 0.0]], [[4.0, 0.0], [0.0, 0.0]]])
    masks = torch.cat([_mask(["##", ".."]), _mask(["#.", ".."])])
    # default threshold 0.5: map 0 selects 1.0 and 0.6, map 1 its single peak
    assert iou(maps, masks).tolist() == [1.0, 1.0]
    assert iou(maps, masks, threshold=0.7).tolist() == [0.5, 1.0]


def test_iou_includes_pixels_exactly_at_the_threshold():
    maps = torch.tensor([[[1.0, 0.5], [0.0, 0.0]]])
    assert iou(maps, _mask(["##", ".."]), threshold=0.5).tolist() == [1.0]
    assert iou(maps, _mask(["#.", ".."]), threshold=1.0).tolist() == [1.0]


def test_iou_threshold_is_a_fraction_of_the_maximum():
    maps = torch.tensor([[[4.0, 1.0], [0.0, 0.0]]])  # cut at 2.0: only the 4
    assert iou(maps, _mask(["#.", ".."]), threshold=0.5).tolist() == [1.0]
    assert iou(maps, _mask([".#", ".."]), threshold=0.5).tolist() == [0.0]
    assert iou(maps, _mask(["##", ".."]), threshold=0.5).tolist() == [0.5]


# ---------------------------------------------------------------------------------------
# Empty masks: NaN, a warning that names the metric and points at the caller's line

def _points_at(record: warnings.WarningMessage, line: int) -> bool:
    """Whether a warning names this file's ``line``. Under mutation testing (mutmut 3) a
    trampoline stands between the caller and every mutated function: the frame it names is
    then mutmut's trampoline, one level above the library."""
    path = Path(record.filename)
    if path.name == "trampoline.py" and "mutmut" in path.parts:
        return True
    return path == Path(__file__) and record.lineno == line


@pytest.mark.parametrize("metric", [pointing_game, relevance_mass, iou])
def test_empty_masks_warn_with_the_metrics_name_at_the_callers_line(metric):
    maps = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]).expand(3, 2, 2)
    masks = torch.cat([_mask(["#.", ".."]), _mask(["..", ".."]), _mask(["..", ".."])])
    line = inspect.currentframe().f_lineno + 2  # the call's line
    with pytest.warns(EmptyMaskWarning) as records:
        values = metric(maps, masks)
    assert values[0].item() == 1.0 and math.isnan(values[1]) and math.isnan(values[2])
    [record] = [r for r in records if r.category is EmptyMaskWarning]
    assert str(record.message) == (f"{metric.__name__}: 2 empty mask(s); "
                                   "their values are NaN")
    assert _points_at(record, line), (record.filename, record.lineno)


# ---------------------------------------------------------------------------------------
# Default tolerance and sparseness

@pytest.mark.parametrize(("size", "expected"), [(224, 15), ((224, 300), 15), ((300, 224), 15),
                                                (448, 30), (157, 11), ((157, 160), 11),
                                                (7, 0), (8, 1)])
def test_default_tolerance_is_15_pixels_at_224(size, expected):
    # 157: 15 · 157 / 224 = 10.51 rounds up (157 / 15 = 10.47 would not)
    assert default_tolerance(size) == expected


def test_sparseness_of_batches_of_vectors_and_of_maps_summing_to_one():
    # (N, D) is a batch too: [0, 1] sorted, weights (2i - n - 1) = (-1, 1): 1 / (2 · 1)
    assert sparseness(torch.tensor([[0.0, 1.0], [1.0, 1.0]])).tolist() == [0.5, 0.0]
    # sorted (0, 0, 0.25, 0.75), weights (-3, -1, 1, 3): 2.5 / (4 · 1)
    assert sparseness(torch.tensor([[[0.25, 0.75], [0.0, 0.0]]])).tolist() == [0.625]
    with pytest.raises(ValueError, match=r"^maps must be \(N, \.\.\.\); got \(4,\)$"):
        sparseness(torch.zeros(4))
