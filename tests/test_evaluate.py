"""The evaluation metrics on hand-made maps and hand-weighted models with known answers,
and their agreement with scipy, scikit-image and (when installed) Quantus."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from vistool.evaluate import (
    METRICS,
    EmptyMaskWarning,
    bootstrap,
    box_masks,
    confidence_change,
    evaluate,
    impute,
    iou,
    names,
    perturbation_curve,
    pointing_game,
    randomisation_check,
    relevance_mass,
    road_curve,
    sparseness,
    spearman,
    ssim,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _masks(*rects, size=(6, 6)):
    """bool (N, H, W) masks, one per (x0, y0, x1, y1) rectangle."""
    return box_masks(torch.tensor(rects), size)


def test_metric_names_and_directions_are_the_librarys():
    assert set(names.METRICS) == set(METRICS) == set(names.HIGHER_IS_BETTER)
    assert names.HIGHER_IS_BETTER["deletion_auc"] is False
    assert names.HIGHER_IS_BETTER["insertion_auc"] is True
    assert set(names.LOCALISATION) < set(METRICS)


def test_box_masks_have_exclusive_ends():
    mask = _masks((1, 2, 3, 5))[0]
    assert mask.sum() == 2 * 3
    assert mask[2, 1] and mask[4, 2] and not mask[5, 2] and not mask[2, 3]


def test_pointing_game_perfect_inverted_blank_constant_and_ties():
    mask = _masks((0, 0, 3, 3))[0]
    perfect = mask.float()
    perfect[1, 1] = 2.0  # a single peak inside
    inverted = (~mask).float()
    inverted[5, 5] = 2.0
    blank = torch.zeros(6, 6)
    constant = torch.full((6, 6), 0.7)
    ties_split = torch.zeros(6, 6)
    ties_split[0, 0] = ties_split[5, 5] = 1.0  # two maxima, one outside
    ties_inside = torch.zeros(6, 6)
    ties_inside[0, 0] = ties_inside[2, 2] = 1.0
    maps = torch.stack([perfect, inverted, blank, constant, ties_split, ties_inside])
    hits = pointing_game(maps, mask.expand(6, 6, 6))
    assert hits.tolist() == [1.0, 0.0, 0.0, 0.0, 0.0, 1.0]


def test_pointing_game_tolerance_is_a_distance_in_pixels():
    mask = _masks((0, 0, 2, 2), size=(8, 8))
    heat = torch.zeros(1, 8, 8)
    heat[0, 1, 3] = 1.0  # two columns right of the mask's last column (x = 1)
    assert pointing_game(heat, mask, tolerance=2).item() == 1.0
    assert pointing_game(heat, mask, tolerance=1).item() == 0.0
    diagonal = torch.zeros(1, 8, 8)
    diagonal[0, 3, 3] = 1.0  # (2, 2) from the corner (1, 1): distance 2.83
    assert pointing_game(diagonal, mask, tolerance=2).item() == 0.0
    assert pointing_game(diagonal, mask, tolerance=3).item() == 1.0


def test_an_empty_mask_gives_nan_with_a_warning():
    maps = torch.rand(2, 6, 6)
    masks = _masks((0, 0, 3, 3), (0, 0, 0, 0))
    for metric in (pointing_game, relevance_mass, iou):
        with pytest.warns(EmptyMaskWarning, match="1 empty mask"):
            values = metric(maps, masks)
        assert not math.isnan(values[0]) and math.isnan(values[1])


def test_relevance_mass_known_values():
    mask = _masks((0, 0, 3, 2))[0]  # 6 of 36 pixels
    maps = torch.stack([mask.float(), (~mask).float(), torch.ones(6, 6), torch.zeros(6, 6),
                        mask.float() * 3 + 1])
    mass = relevance_mass(maps, mask.expand(5, 6, 6))
    assert mass.tolist() == pytest.approx([1.0, 0.0, 6 / 36, 0.0, (6 * 4) / (6 * 4 + 30)])


def test_iou_of_the_thresholded_map():
    mask = _masks((0, 0, 3, 2))[0]
    half = torch.zeros(6, 6)
    half[0, :3] = 1.0  # 3 of the mask's 6 pixels, at the maximum
    half[1, :3] = 0.4  # below half the maximum: not selected
    half[5, 5] = 0.6  # selected, outside
    maps = torch.stack([mask.float(), half, torch.zeros(6, 6), torch.ones(6, 6)])
    scores = iou(maps, mask.expand(4, 6, 6), threshold=0.5)
    assert scores.tolist() == pytest.approx([1.0, 3 / 7, 0.0, 0.0])


def test_sparseness_is_the_gini_index():
    one_hot = torch.zeros(1, 4, 4)
    one_hot[0, 2, 1] = 5.0
    maps = torch.stack([torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.ones(2, 2),
                        torch.zeros(2, 2), torch.tensor([[0.0, 0.0], [-1.0, 1.0]])])
    assert sparseness(maps).tolist() == pytest.approx([0.5, 0.0, 0.0, 0.5])
    assert sparseness(one_hot).item() == pytest.approx(15 / 16)


# ---------------------------------------------------------------------------------------
# Faithfulness on a hand-weighted linear model: logits = (w · x, 0)

def _linear_model(weights: torch.Tensor) -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(weights.numel(), 2))
    with torch.no_grad():
        net[1].weight.zero_()
        net[1].bias.zero_()
        net[1].weight[0] = weights.flatten()
    return net


def _prob(logit: float) -> float:
    return 1 / (1 + math.exp(-logit))


def test_deletion_and_insertion_curves_equal_the_hand_computation():
    w = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])  # (1, 2, 2)
    net = _linear_model(w)
    image = torch.ones(1, 1, 2, 2)
    heat = torch.tensor([[[0.1, 0.9], [0.5, 0.9]]])
    # removal order (y, x): (0, 1), (1, 1) (the tie, in reading order), (1, 0), (0, 0)
    removed_order = [2.0, 4.0, 3.0, 1.0]
    deletion = perturbation_curve(net, image, heat, targets=0, mode="deletion", steps=4,
                                  baseline=0.0)
    left = [10.0 - sum(removed_order[:k]) for k in range(5)]
    assert deletion.scores[0].tolist() == pytest.approx([_prob(v) for v in left], abs=1e-6)
    assert deletion.fractions.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1])
    expected_auc = np.trapezoid([_prob(v) for v in left], dx=0.25)
    assert deletion.auc.item() == pytest.approx(expected_auc, abs=1e-6)
    insertion = perturbation_curve(net, image, heat, targets=0, mode="insertion", steps=4,
                                   baseline=0.0)
    shown = [sum(removed_order[:k]) for k in range(5)]
    assert insertion.scores[0].tolist() == pytest.approx([_prob(v) for v in shown], abs=1e-6)
    two_steps = perturbation_curve(net, image, heat, targets=0, steps=2, baseline=0.0)
    assert two_steps.scores[0].tolist() == pytest.approx([_prob(10), _prob(4), _prob(0)],
                                                         abs=1e-6)


def test_curves_do_not_depend_on_the_batch_size_and_leave_the_model_alone(tiny_net):
    torch.manual_seed(1)
    images, maps = torch.randn(3, 1, 6, 6), torch.rand(3, 6, 6)
    tiny_net.train()
    before = copy.deepcopy(tiny_net.state_dict())
    one = perturbation_curve(tiny_net, images, maps, targets=torch.tensor([0, 1, 2]),
                             steps=6, batch_size=1)
    many = perturbation_curve(tiny_net, images, maps, targets=torch.tensor([0, 1, 2]),
                              steps=6, batch_size=64)
    torch.testing.assert_close(one.scores, many.scores)
    assert tiny_net.training
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())


def test_baselines_blur_and_mean():
    w = torch.ones(1, 2, 2)
    net = _linear_model(w)
    image = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]]]])
    heat = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    mean = perturbation_curve(net, image, heat, 0, steps=4, baseline="mean")
    assert mean.scores[0, 1].item() == pytest.approx(_prob(12 - 1 + 3), abs=1e-6)
    with pytest.raises(ValueError, match="unknown baseline"):
        perturbation_curve(net, image, heat, 0, baseline="noise")


def test_average_drop_and_increase_in_confidence():
    net = _linear_model(torch.tensor([[[1.0, -1.0], [2.0, 0.0]]]))
    images = torch.ones(2, 1, 2, 2)  # logit 2
    maps = torch.stack([torch.tensor([[1.0, 0.0], [0.0, 0.0]]),  # keeps x00: logit 1
                        torch.tensor([[1.0, 0.0], [1.0, 0.0]])])  # logit 3
    drop, increase = confidence_change(net, images, maps, targets=0)
    y = _prob(2.0)
    assert drop.tolist() == pytest.approx([(y - _prob(1.0)) / y, 0.0], abs=1e-6)
    assert increase.tolist() == [0.0, 1.0]


def test_imputation_solves_the_neighbour_equations():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 12, 10)
    removed = torch.rand(2, 1, 12, 10) < 0.4
    removed[1, :, :6, :5] = True  # a solid hole
    filled = impute(images, removed, noise=0.0)
    assert torch.equal(filled[~removed.expand_as(images)], images[~removed.expand_as(images)])
    kernel = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])
    kernel = kernel.expand(3, 1, 3, 3)
    conv = torch.nn.functional.conv2d
    mean = conv(filled, kernel, padding=1, groups=3) / conv(torch.ones_like(filled), kernel,
                                                            padding=1, groups=3)
    gap = (mean - filled).abs()[removed.expand_as(images)]
    assert gap.max() < 1e-4
    flat = torch.full((1, 1, 5, 5), 0.3)
    hole = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
    hole[0, 0, 1:4, 1:4] = True
    torch.testing.assert_close(impute(flat, hole, noise=0.0), flat)


def test_road_is_seeded_and_ordered(tiny_net):
    torch.manual_seed(2)
    images, maps = torch.randn(2, 1, 6, 6), torch.rand(2, 6, 6)
    a = road_curve(tiny_net, images, maps, targets=1, seed=3, batch_size=3)
    b = road_curve(tiny_net, images, maps, targets=1, seed=3, batch_size=64)
    torch.testing.assert_close(a.scores, b.scores)
    assert a.scores.shape == (2, 10) and a.mode == "road-morf"
    c = road_curve(tiny_net, images, maps, targets=1, seed=4)
    assert not torch.equal(a.scores, c.scores)
    with pytest.raises(ValueError, match="morf or lerf"):
        road_curve(tiny_net, images, maps, targets=1, order="middle")


def _one_pixel_scene(value: float = 4.0, rest: float = 1.0, size: int = 4, at: int = 5):
    """A model whose logit is pixel ``at`` (flat index) of a constant image but for that pixel:
    once ROAD removes it, imputation from constant neighbours gives back ``rest``."""
    w = torch.zeros(1, size, size)
    w.view(-1)[at] = 1.0
    image = torch.full((1, 1, size, size), rest)
    image.view(-1)[at] = value
    return _linear_model(w), image


def test_road_removes_most_or_least_relevant_first_by_hand():
    net, image = _one_pixel_scene()
    # pixel 5's relevance is 7th of 16 from the top, 10th from the bottom
    heat = torch.arange(16.0).view(1, 4, 4)
    heat.view(-1)[[5, 9]] = heat.view(-1)[[9, 5]]
    kept, removed = _prob(4.0), _prob(1.0)
    fractions = (0.25, 0.5, 0.75)  # 4, 8 and 12 pixels
    morf = road_curve(net, image, heat, 0, "morf", fractions, noise=0.0)
    lerf = road_curve(net, image, heat, 0, "lerf", fractions, noise=0.0)
    assert morf.mode == "road-morf" and lerf.mode == "road-lerf"
    assert morf.fractions.tolist() == pytest.approx([0, 0.25, 0.5, 0.75])
    assert morf.scores[0].tolist() == pytest.approx([kept, kept, removed, removed], abs=1e-5)
    assert lerf.scores[0].tolist() == pytest.approx([kept, kept, kept, removed], abs=1e-5)
    for curve, steps_kept in ((morf, 2), (lerf, 3)):
        points = [kept] * steps_kept + [removed] * (4 - steps_kept)
        assert curve.auc.item() == pytest.approx(np.trapezoid(points, dx=0.25), abs=1e-5)


def test_blur_baseline_is_a_gaussian_of_sigma_5_over_11_pixels():
    from scipy.ndimage import gaussian_filter

    generator = torch.Generator().manual_seed(0)
    w = torch.randn(1, 8, 8, generator=generator) / 8  # logits of order 1: no saturation
    net = _linear_model(w)
    image = torch.rand(1, 1, 8, 8, generator=generator) * 4
    heat = torch.rand(1, 8, 8, generator=generator)
    # torchvision pads by reflection without repeating the edge: scipy's "mirror"
    blurred = gaussian_filter(image[0, 0].double().numpy(), sigma=5, mode="mirror",
                              truncate=1.0)
    order = np.argsort(-heat.flatten().numpy(), kind="stable")
    pixels, blurred = image[0, 0].flatten().double().numpy(), blurred.flatten()

    def probs(start, end):  # the top `count` pixels from `end`, the others from `start`
        out = []
        for count in (0, 16, 32, 48, 64):
            x = start.copy()
            x[order[:count]] = end[order[:count]]
            out.append(_prob(float(w.flatten().double().numpy() @ x)))
        return out

    deletion = perturbation_curve(net, image, heat, 0, "deletion", steps=4, baseline="blur")
    assert deletion.scores[0].tolist() == pytest.approx(probs(pixels, blurred), abs=1e-5)
    insertion = perturbation_curve(net, image, heat, 0, "insertion", steps=4)  # blur: default
    assert insertion.scores[0].tolist() == pytest.approx(probs(blurred, pixels), abs=1e-5)


def test_evaluate_road_aucs_by_hand():
    net, image = _one_pixel_scene(size=6, at=14)
    images = image.expand(3, -1, -1, -1).contiguous()
    ev = evaluate(net, images, 0, methods=["random"], metrics=["road_morf_auc",
                                                               "road_lerf_auc"], seed=5)
    maps = ev.maps["random"]
    assert (maps.std((1, 2)) > 0).all()
    # the seeded noise of the imputation: one draw per image (road_curve's noise=0.01)
    jitter = 0.01 * torch.randn(images.shape, generator=torch.Generator().manual_seed(5))
    fractions = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    for order, descending in (("morf", True), ("lerf", False)):
        order_of_removal = maps.flatten(1).argsort(dim=1, descending=descending)
        rank = order_of_removal.argsort(dim=1)[:, 14]  # when pixel 14 goes
        expected = []
        for i in range(3):
            removed = _prob(1.0 + float(jitter[i, 0].flatten()[14]))
            points = [removed if rank[i] < round(f * 36) else _prob(4.0) for f in fractions]
            expected.append(np.trapezoid(points, fractions))
        assert ev.values["random"][f"road_{order}_auc"].tolist() == pytest.approx(expected,
                                                                                abs=1e-5)
        torch.testing.assert_close(ev.curves["random"][f"road-{order}"].auc,
                                   ev.values["random"][f"road_{order}_auc"])


# ---------------------------------------------------------------------------------------
# Sanity checks

def test_spearman_and_ssim_equal_scipy_and_scikit_image():
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    torch.manual_seed(0)
    a = torch.randint(0, 4, (3, 9, 11)).float()  # many ties
    b = torch.randint(0, 4, (3, 9, 11)).float()
    expected = [spearmanr(x.flatten(), y.flatten()).statistic for x, y in zip(a, b)]
    assert spearman(a, b).tolist() == pytest.approx(expected, abs=1e-6)
    assert spearman(a, torch.zeros_like(a)).tolist() == [0.0, 0.0, 0.0]
    c, d = torch.rand(2, 20, 24), torch.rand(2, 20, 24)
    expected = [structural_similarity(x.numpy(), y.numpy(), data_range=1.0)
                for x, y in zip(c, d)]
    assert ssim(c, d).tolist() == pytest.approx(expected, abs=1e-6)


def test_randomisation_cascades_on_a_copy(tiny_net):
    torch.manual_seed(0)
    images = torch.randn(4, 1, 6, 6)
    tiny_net.train()
    before = copy.deepcopy(tiny_net.state_dict())
    seen = []

    def explainer(net, x, targets):
        seen.append(net.fc.weight.detach().clone())
        return net.conv(x).abs().sum(1)  # depends on the conv only

    result = randomisation_check(tiny_net, images, torch.zeros(4, dtype=torch.long),
                                 explainer)
    assert result.layers == ["fc", "conv"]
    assert result.spearman[0].tolist() == pytest.approx([1.0] * 4)  # fc random: same maps
    assert (result.spearman[1] < 0.99).all()
    assert result.ssim.shape == (2, 4) and result.maps.shape == (3, 6, 6)
    assert not torch.equal(seen[1], seen[0])  # the copy's fc was randomised
    assert tiny_net.training
    assert all(torch.equal(before[k], v) for k, v in tiny_net.state_dict().items())


def test_bootstrap_summary():
    summary = bootstrap(torch.tensor([0.5, 0.5, math.nan, 0.5]))
    assert summary == {"mean": 0.5, "std": 0.0, "ci95": [0.5, 0.5], "n": 3}
    spread = bootstrap(torch.arange(100.0), seed=1)
    assert spread["ci95"][0] < 49.5 < spread["ci95"][1]
    assert spread == bootstrap(torch.arange(100.0), seed=1)
    assert bootstrap(torch.tensor([math.nan]))["mean"] is None


def test_evaluate_requires_masks_for_localisation(tiny_net):
    from vistool.core.errors import VistoolError

    images = torch.randn(2, 1, 6, 6)
    with pytest.raises(VistoolError, match="need object masks or boxes"):
        evaluate(tiny_net, images, torch.tensor([0, 1]), methods=["random"])
    with pytest.raises(VistoolError, match="unknown metric 'delet'"):
        evaluate(tiny_net, images, 0, metrics=["delet"])
    ev = evaluate(tiny_net, images, 0, methods=["gradcam", "random"], layer="conv",
                  metrics=["sparseness", "deletion_auc"], steps=4)
    summary = ev.summary()["methods"]
    assert set(summary) == {"gradcam", "random"}
    assert set(summary["random"]) == {"sparseness", "deletion_auc"}
    assert summary["gradcam"]["deletion_auc"]["higher_is_better"] is False
    assert ev.curves["random"]["deletion"].scores.shape == (2, 5)
