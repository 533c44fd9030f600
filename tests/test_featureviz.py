"""Feature visualisation and the synthesis core: parameterisations, transforms, objectives,
the truncated loop, and selectivity on the trained shapes CNN."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vistool
from vistool.cli import main
from vistool.core.hooks import OUTPUT, forward_until, redirected_relus
from vistool.synthesize import objectives as obj
from vistool.synthesize.featureviz import first_layer_weights, render_classes, render_filters
from vistool.synthesize.optimize import _schedule, optimize
from vistool.synthesize.param import FourierImage, PixelImage, make_param
from vistool.synthesize.transform import Transforms


class Tripwire(nn.Module):
    def forward(self, x):
        raise AssertionError("the forward pass ran past the deepest layer it needed")


class Tiny(nn.Module):
    def __init__(self, trip: bool = False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=1)
        self.trip = Tripwire() if trip else nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))

    def forward(self, x):
        return self.head(self.trip(self.conv2(self.relu(self.conv(x)))))


def generators(count, seed=0):
    return [torch.Generator().manual_seed(seed + i) for i in range(count)]


def tiny_loaded(trip=False):
    return vistool.load_model(Tiny(trip), input_size=(3, 16, 16), mean=[0.5] * 3,
                              std=[0.25] * 3, device="cpu")


# --- parameterisations -------------------------------------------------------------------

@pytest.mark.parametrize("cls", [FourierImage, PixelImage])
@pytest.mark.parametrize("size", [(3, 16, 20), (3, 15, 15), (1, 12, 9)])
def test_parameterisations_round_trip_and_stay_in_range(cls, size):
    param = cls(size, generators(2))
    images = param()
    assert images.shape == (2, *size) and images.min() > 0 and images.max() < 1
    target = torch.rand(2, *size) * 0.9 + 0.05
    param.set_images(target)
    torch.testing.assert_close(param(), target, atol=2e-5, rtol=0)


def test_fourier_images_favour_low_frequencies():
    param = FourierImage((3, 64, 64), generators(4), sd=0.5)
    power = torch.fft.rfft2(param() - 0.5).abs().pow(2).mean((0, 1))
    assert power[1:4, 1:4].mean() > 20 * power[20:32, 20:32].mean()


def test_images_depend_only_on_their_own_generator():
    alone = make_param("fft", (3, 8, 8), [torch.Generator().manual_seed(5)])()
    batch = make_param("fft", (3, 8, 8), [torch.Generator().manual_seed(1),
                                          torch.Generator().manual_seed(5)])()
    assert torch.equal(batch[1], alone[0])
    with pytest.raises(vistool.VistoolError, match="unknown image parameterisation 'png'"):
        make_param("png", (3, 8, 8), generators(1))


# --- transforms ---------------------------------------------------------------------------

def test_transforms_keep_shape_and_are_identity_at_strength_zero():
    images = torch.rand(3, 3, 20, 30)
    assert torch.equal(Transforms.none()(images, generators(3)), images)
    for field in ("pad", "jitter", "scale", "rotate", "jitter2"):
        strength = {"pad": 4, "jitter": 3, "scale": 0.2, "rotate": 15, "jitter2": 2}[field]
        one = Transforms(**{**Transforms.none().__dict__, field: strength})
        moved = one(images, generators(3))
        assert moved.shape == images.shape
        assert (moved - images).abs().max() > 0.05, field
    all_at_once = Transforms()(images, generators(3))
    assert all_at_once.shape == images.shape and 0 <= all_at_once.min() <= all_at_once.max() <= 1


def test_integer_jitter_is_a_shift_with_grey_fill():
    images = torch.rand(1, 3, 10, 12)
    (gen,) = generators(1, seed=3)
    theta = Transforms(0, 2, 0, 0, 0).matrices((10, 12), [gen])
    shift_x = -theta[0, 0, 2].item() * 12 / 2  # pixels moved to the right
    shift_y = -theta[0, 1, 2].item() * 10 / 2
    # A transform that moves by exactly one pixel: build it from the same matrix form.
    exact = torch.tensor([[[1.0, 0.0, -2 / 12], [0.0, 1.0, 0.0]]])
    grid = torch.nn.functional.affine_grid(exact, [1, 3, 10, 12], align_corners=False)
    moved = torch.nn.functional.grid_sample(images - 0.5, grid, align_corners=False) + 0.5
    torch.testing.assert_close(moved[..., 1:], images[..., :-1], atol=1e-6, rtol=0)
    assert torch.allclose(moved[..., 0], torch.full_like(moved[..., 0], 0.5))
    assert abs(shift_x) <= 2 and abs(shift_y) <= 2


def test_transform_of_an_image_does_not_depend_on_its_batch():
    images = torch.rand(3, 3, 16, 16)
    batch = Transforms()(images, generators(3))
    alone = Transforms()(images[2:], generators(3)[2:])
    torch.testing.assert_close(batch[2:], alone, atol=1e-6, rtol=0)


# --- objectives ---------------------------------------------------------------------------

def test_objectives_select_per_image_channels_and_compose():
    act = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    image = torch.zeros(2, 3, 4, 4)
    image[1, :, :, 2:] = 1.0
    acts = {"a": act, obj.INPUT: image, OUTPUT: torch.tensor([[1.0, 2.0], [3.0, 4.0]])}
    assert obj.channel("a", [0, 2])(acts).tolist() == [1.5, 21.5]
    assert obj.channel("a", 1)(acts).tolist() == [5.5, 17.5]
    assert obj.neuron("a", [0, 2])(acts).tolist() == [3.0, 23.0]  # centre (1, 1)
    assert obj.class_logit([1, 0])(acts).tolist() == [2.0, 3.0]
    assert obj.deepdream("a")(acts)[0].item() == pytest.approx(act[0].pow(2).mean().item())
    assert obj.total_variation()(acts).tolist() == [0.0, pytest.approx(1 / 3)]
    assert obj.l1()(acts).tolist() == [0.5, 0.5] and obj.l2()(acts).tolist() == [0.5, 0.5]
    combo = 2 * obj.channel("a", 0) - obj.l1() + 1
    assert combo(acts).tolist() == [2 * 1.5 - 0.5 + 1, 2 * 13.5 - 0.5 + 1]
    assert combo.layers == ("a", obj.INPUT)
    assert (-obj.channel("a", 0))(acts).tolist() == [-1.5, -13.5]
    assert (obj.channel("a", 0) * obj.channel("a", 1))(acts).tolist() == [1.5 * 5.5, 13.5 * 17.5]
    direction = obj.direction("a", torch.tensor([1.0, 0.0, 0.0]))(acts)
    expected = torch.nn.functional.cosine_similarity(
        act, torch.tensor([1.0, 0, 0]).view(1, 3, 1, 1), dim=1).flatten(1).mean(1)
    torch.testing.assert_close(direction, expected)
    same = {"a": act[:1].expand(2, -1, -1, -1)}
    assert obj.diversity("a")(same).tolist() == pytest.approx([-1.0, -1.0])


def test_blur_objective_is_zero_on_a_flat_image_and_negative_on_noise():
    flat = {obj.INPUT: torch.full((1, 3, 8, 8), 0.3)}
    noisy = {obj.INPUT: torch.rand(1, 3, 8, 8)}
    assert obj.blur()(flat).item() == pytest.approx(0.0, abs=1e-7)
    assert obj.blur()(noisy).item() < 0


def test_forward_until_stops_at_the_deepest_layer_and_removes_hooks():
    model = Tiny(trip=True)
    x = torch.rand(2, 3, 8, 8)
    acts = forward_until(model, x, ["conv", "conv2"])
    assert acts["conv"].shape == (2, 4, 8, 8) and acts["conv2"].shape == (2, 3, 8, 8)
    assert acts["conv"].min() < 0  # pre-ReLU although the ReLU is in-place
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(AssertionError, match="ran past"):
        forward_until(model, x, [OUTPUT])
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(vistool.LayerError, match="did you mean 'conv', 'conv2'"):
        forward_until(model, x, ["conv3"])


# --- the loop -----------------------------------------------------------------------------

def test_optimising_a_channel_raises_it_and_leaves_the_model_as_it_was():
    model = Tiny(trip=True)
    model.train()
    model.conv.weight.requires_grad_(False)
    grad = torch.ones_like(model.conv2.weight)
    model.conv2.weight.grad = grad
    param = make_param("fft", (3, 16, 16), generators(2))
    done = optimize(model, obj.channel("conv2", [0, 1]), param, generators(2, 10), steps=30,
                    lr=0.05, transforms=Transforms(2, 2, 0.1, 5, 1), mean=[0.5] * 3,
                    std=[0.25] * 3)
    assert done.history.shape == (30, 2)
    assert (done.history[-5:].mean(0) > done.history[:5].mean(0)).all()
    down = optimize(model, -obj.channel("conv2", [0, 1]), make_param("fft", (3, 16, 16),
                    generators(2)), generators(2, 10), steps=30, lr=0.05,
                    transforms=Transforms(2, 2, 0.1, 5, 1), mean=[0.5] * 3, std=[0.25] * 3)
    assert (down.history[-5:].mean(0) > down.history[:5].mean(0)).all()  # -activation rose
    assert (-down.history[-1] < done.history[-1]).all()
    assert model.training and model.conv2.weight.requires_grad
    assert not model.conv.weight.requires_grad and model.conv2.weight.grad is grad
    assert model.conv.weight.grad is None
    assert all(not m._forward_hooks for m in model.modules())


def test_render_filters_is_seeded_and_batch_independent():
    loaded = tiny_loaded(trip=True)
    kwargs = {"size": 16, "steps": 12, "seed": 7}
    both = render_filters(loaded, "conv2", [0, 2], batch_size=2, **kwargs)
    again = render_filters(loaded, "conv2", [0, 2], batch_size=2, **kwargs)
    alone = render_filters(loaded, "conv2", [2], batch_size=1, **kwargs)
    assert torch.equal(both.images, again.images)
    torch.testing.assert_close(both.images[1], alone.images[0], atol=1e-4, rtol=0)
    assert both.images.shape == (2, 3, 16, 16) and both.history.shape == (12, 2)
    assert both.targets == [0, 2] and both.kind == "channel" and both.layer == "conv2"
    other_seed = render_filters(loaded, "conv2", [0, 2], batch_size=2, size=16, steps=12,
                                seed=8)
    assert not torch.equal(other_seed.images, both.images)


class FunctionalReLU(nn.Module):
    """A convolution and a ReLU in one of its functional forms."""

    def __init__(self, form: str):
        super().__init__()
        self.conv, self.form = nn.Conv2d(3, 2, 3, padding=1), form

    def forward(self, x):
        x = self.conv(x)
        if self.form == "F.relu":
            return F.relu(x)
        if self.form == "F.relu inplace":
            return F.relu(x, inplace=True)
        if self.form == "torch.relu":
            return torch.relu(x)
        if self.form == "x.relu()":
            return x.relu()
        x.relu_()  # in place, its result unused: the input itself must change
        return x


@pytest.mark.parametrize("form", ["nn.ReLU", "F.relu", "F.relu inplace", "torch.relu",
                                  "x.relu()", "x.relu_()"])
def test_redirected_relu_turns_on_a_channel_that_starts_dead(form):
    torch.manual_seed(0)
    if form == "nn.ReLU":
        model = nn.Sequential(nn.Conv2d(3, 2, 3, padding=1), nn.ReLU(inplace=True))
        conv, layer = model[0], "1"
    else:
        model = FunctionalReLU(form)
        conv, layer = model.conv, OUTPUT
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([-0.5, 0.0]))  # channel 0 is off on a flat image
    x = torch.rand(2, 3, 8, 8)
    with torch.no_grad(), redirected_relus(model):
        redirected = model(x.clone())
    torch.testing.assert_close(redirected, model(x.clone()))  # the forward is the ReLU's
    assert redirected.amin() == 0 and (redirected > 0).any()

    def run(redirect):
        return optimize(model, obj.channel(layer, [0, 0]), make_param("fft", (3, 8, 8),
                        generators(2)), generators(2, 10), steps=20, lr=0.1,
                        transforms=Transforms.none(), mean=[0.5] * 3, std=[0.25] * 3,
                        redirect_relu=redirect).history

    assert (run(False) == 0).all()  # no gradient ever reaches a unit that is off everywhere
    assert (run(True)[-1] > 0).all()
    assert all("forward" not in m.__dict__ and not m._forward_hooks for m in model.modules())


class FunctionalNet(nn.Module):
    """conv -> F.relu -> conv -> torch.relu, the second layer's biases lowered: every one of
    its channels is off on the flat start image (and some on real images too)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        with torch.no_grad():
            self.conv2.bias.sub_(0.4)
        self.out = nn.Identity()

    def forward(self, x):
        return self.out(torch.relu(self.conv2(F.relu(self.conv(x)))))


def test_every_channel_a_real_image_turns_on_renders_through_functional_relus():
    from vistool.data.shapes import render_scene

    loaded = vistool.load_model(FunctionalNet(), input_size=(3, 32, 32), mean=[0.5] * 3,
                                std=[0.25] * 3, device="cpu")
    rng = np.random.default_rng(0)
    real = torch.stack([loaded.transform(vistool.load_image(render_scene(
        rng, 32, [int(rng.integers(5))]).image)) for _ in range(16)])
    with torch.no_grad():
        active = loaded.model(real).amax((0, 2, 3)) > 0
        assert (loaded.model(torch.zeros(1, 3, 32, 32)) == 0).all()  # all off when flat
    assert 3 <= int(active.sum()) < 8

    def rendered(redirect):
        result = render_filters(loaded, "out", size=32, steps=96, lr=0.2, batch_size=8,
                                transforms=Transforms.none(), redirect_relu=redirect)
        with torch.no_grad():
            own = loaded.model((result.images - 0.5) / 0.25).mean((2, 3)).diagonal()
        return result.images.flatten(1).std(1), own

    spread, own = rendered(True)
    assert (spread[active] > 0.05).all() and (own[active] > 0).all(), (spread, own)
    spread, own = rendered(False)  # no gradient reaches the start image: it stays flat
    assert (spread < 0.01).all() and (own == 0).all()


def test_learning_rate_warms_up_then_decays_on_a_cosine():
    weight = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([weight], lr=1.0)
    schedule = _schedule(optimizer, steps=10, final_lr=0.1, warmup=4)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        schedule.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[-1] == pytest.approx(0.1) and all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert _schedule(optimizer, 10, None, 0) is None


@pytest.mark.parametrize(("steps", "peak", "warmup"), [
    (32, 0.1, 1), (64, 0.1, 4), (128, 0.05 * 2 ** 0.5, 16), (256, 0.05, 64), (1000, 0.05, 250)])
def test_short_runs_take_a_higher_peak_and_a_shorter_warm_up(monkeypatch, steps, peak, warmup):
    """What render_filters hands the Adam loop at each step count: the peak lr * sqrt(256 /
    steps) (at most 2x), the cosine to a tenth of it, the warm-up a quarter of the steps
    times steps / 256; the exchange continues at the main run's final rate, constant."""
    from vistool.synthesize import featureviz

    calls = []

    def spy(*args, final_lr, warmup, **kwargs):
        calls.append((args[5], final_lr, warmup))
        return optimize(*args[:4], 1, *args[5:], final_lr=final_lr, warmup=warmup, **kwargs)

    monkeypatch.setattr(featureviz, "optimize", spy)
    render_filters(tiny_loaded(), "conv2", [0, 1], size=16, steps=steps, exchange_steps=3)
    (lr, final, warm), exchange = calls
    assert (lr, final, warm) == (pytest.approx(peak), pytest.approx(peak / 10), warmup)
    assert exchange == (pytest.approx(peak / 10), pytest.approx(peak / 10), 0)


@pytest.mark.parametrize(("text", "python"), [
    ("conv:1", lambda: obj.channel("conv", 1)),
    ("conv:2:channel", lambda: obj.channel("conv", 2)),
    ("conv:2:neuron", lambda: obj.neuron("conv", 2)),
    ("logit:1", lambda: obj.class_logit(1)),
    ("-conv:1", lambda: -obj.channel("conv", 1)),
    ("conv:1 - 0.5*diversity(conv)", lambda: obj.channel("conv", 1) - 0.5 * obj.diversity("conv")),
    ("2*(conv:0 + neuron(conv2, 1)) - l1(0.3) + total_variation() * 0.1",
     lambda: 2 * (obj.channel("conv", 0) + obj.neuron("conv2", 1)) - obj.l1(0.3)
     + obj.total_variation() * 0.1),
    ("deepdream(conv2) + blur(0.7) - l2()", lambda: obj.deepdream("conv2") + obj.blur(0.7)
     - obj.l2()),
    ("channel(conv, 3) * logit(0)", lambda: obj.channel("conv", 3) * obj.class_logit(0)),
])
def test_objective_strings_equal_their_python_forms(text, python):
    from vistool.synthesize.objective_text import parse
    from vistool.synthesize.optimize import evaluate

    model = Tiny()
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    parsed, expected = parse(text), python()
    assert set(parsed.layers) == set(expected.layers)
    ours = evaluate(model, parsed, images, [0.5] * 3, [0.25] * 3)
    torch.testing.assert_close(ours, evaluate(model, expected, images, [0.5] * 3, [0.25] * 3))
    assert ours.abs().sum() > 0


@pytest.mark.parametrize(("text", "fragment"), [
    ("conv:9", "channel 9 is out of range: 'conv' has 4 channels (0-3)"),
    ("nope:1 + conv:0", "no layer named 'nope'"),
    ("logit:5", "class index 5 is out of range"),
    ("foo(conv)", "objective 'foo(conv)': unknown function 'foo'"),
    ("conv:1 +", "objective 'conv:1 +': it ends too early"),
    ("conv:1 $ 2", "unexpected '$'"),
    ("conv", "'conv' is not an objective"),
    ("conv:1:edge", "'conv:1:edge' is not an objective"),
    ("channel(conv)", "channel takes 2 arguments (layer, int), got 1"),
    ("conv:x", "channel's int argument must be an int, not 'x'"),
    ("(conv:1", "objective '(conv:1': it ends too early"),
    ("(conv:1 conv:2)", "expected ')', found 'conv:2'"),
    ("3 * 2", "is a number, not an objective"),
])
def test_a_bad_objective_is_one_error_naming_its_bad_part(text, fragment):
    with pytest.raises(vistool.VistoolError) as error:
        vistool.render(tiny_loaded(), text, size=16, steps=1)
    assert fragment in str(error.value) and "\n" not in str(error.value)


def test_render_a_batch_for_any_objective_and_negative_images(tmp_path, capsys):
    loaded = tiny_loaded()
    kwargs = {"size": 16, "steps": 24, "lr": 0.1, "transforms": Transforms.none()}
    diverse = vistool.render(loaded, "conv:1 - 0.5*diversity(conv)", batch=3, **kwargs)
    again = vistool.render(loaded, obj.channel("conv", 1) - 0.5 * obj.diversity("conv"),
                           batch=3, **kwargs)
    assert torch.equal(diverse.images, again.images) and diverse.kind == "objective"
    assert diverse.objective == "channel(conv, 1) - diversity(conv) * 0.5"
    assert diverse.images.shape == (3, 3, 16, 16) and diverse.history.shape == (24, 3)
    assert (diverse.images[0] - diverse.images[1]).abs().max() > 0.05
    negative = render_filters(loaded, "conv", [0, 1], negative=True, **kwargs)
    noise = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad(), vistool.record(loaded.model, "conv") as rec:
        loaded.model((torch.cat([negative.images, noise]) - 0.5) / 0.25)
    means = rec["conv"].mean((2, 3))
    for i, channel in enumerate([0, 1]):  # below its value on every noise image
        assert means[i, channel] < means[2:, channel].min()
    assert torch.allclose(negative.activations, -means[[0, 1], [0, 1]], atol=1e-5)
    out = tmp_path / "out"
    factory = tmp_path / "tiny.py"
    factory.write_text("from test_featureviz import Tiny\n\ndef build():\n    return Tiny()\n")
    argv = ["filters", "--model", f"{factory}:build", "--input-size", "3,16,16", "--size",
            "16", "--steps", "4", "--out", str(out)]
    assert main([*argv, "--objective", "conv:1", "--negative", "--batch", "2"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [o["name"] for o in manifest["outputs"]] == ["channel(conv, 1) * -1"] * 2
    assert manifest["options"]["objective"] == "conv:1" and manifest["options"]["negative"]
    capsys.readouterr()
    assert main([*argv[:-1], str(tmp_path / "bad"), "--objective", "conv:7"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert errors == ["vistool: error: channel 7 is out of range: 'conv' has 4 channels (0-3)"]
    assert not (tmp_path / "bad").exists()


def test_direction_reads_its_vector_from_a_file_only_where_allowed(tmp_path):
    from vistool.synthesize.objective_text import parse
    from vistool.synthesize.optimize import evaluate

    vector = np.array([0.5, -1.0, 2.0, 0.0], np.float32)
    np.save(tmp_path / "v.npy", vector)
    np.save(tmp_path / "short.npy", vector[:3])
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    parsed = parse(f"direction(conv, {tmp_path / 'v.npy'}) - 0.1*l1()",
                   read=lambda path: torch.from_numpy(np.load(path)))
    expected = obj.direction("conv", torch.from_numpy(vector)) - 0.1 * obj.l1()
    torch.testing.assert_close(evaluate(Tiny(), parsed, images, [0.5] * 3, [0.25] * 3),
                               evaluate(Tiny(), expected, images, [0.5] * 3, [0.25] * 3))
    loaded = tiny_loaded()
    for text, read_files, fragment in (
            (f"direction(conv, {tmp_path / 'v.npy'})", False,
             "direction(...) reads a vector from a file, which is not allowed here"),
            (f"direction(conv, {tmp_path / 'short.npy'})", True,
             "direction's vector has 3 values; 'conv' has 4 channels"),
            (f"direction(conv, {tmp_path / 'none.npy'})", True, "cannot read a vector from")):
        with pytest.raises(vistool.VistoolError, match=re.escape(fragment)):
            vistool.render(loaded, text, size=16, steps=1, read_files=read_files)
    found = vistool.render(loaded, f"direction(conv, {tmp_path / 'v.npy'})", size=16, steps=24,
                           lr=0.1, transforms=Transforms.none())
    assert found.activations[0] > found.history[0, 0] + 0.5 and found.activations[0] > 0


def test_interpolation_frames_move_monotonically_between_the_two_objectives(tmp_path):
    from vistool.synthesize.optimize import evaluate

    loaded = tiny_loaded()
    frames = vistool.render(loaded, "conv:0", interpolate=obj.channel("conv", 1), batch=6,
                            size=16, steps=300, lr=0.5, param="pixel",
                            transforms=Transforms.none())
    assert frames.objective == "interpolation(channel(conv, 0), channel(conv, 1))"
    first, second = (evaluate(loaded.model, obj.channel("conv", c), frames.images, [0.5] * 3,
                              [0.25] * 3) for c in (0, 1))
    assert (first.diff() <= 1e-6).all() and (second.diff() >= -1e-6).all(), (first, second)
    assert first[0] - first[-1] > 0.1 and second[-1] - second[0] > 0.1
    factory = tmp_path / "tiny.py"
    factory.write_text("from test_featureviz import Tiny\n\ndef build():\n    return Tiny()\n")
    assert main(["filters", "--model", f"{factory}:build", "--input-size", "3,16,16", "--size",
                 "16", "--steps", "4", "--interpolate", "conv:0", "conv:1", "--frames", "3",
                 "--out", str(tmp_path / "out")]) == 0
    names = [o["name"] for o in json.loads((tmp_path / "out" / "manifest.json").read_text())[
        "outputs"]]
    assert names == ["interpolation(channel(conv, 0), channel(conv, 1))"] * 3


def test_class_log_prob_score_is_a_log_probability():
    loaded = tiny_loaded()
    result = render_classes(loaded, [0, 1], size=16, steps=4, score="log_prob")
    assert (result.history <= 0).all()
    with torch.no_grad():
        log_probs = loaded.model((result.images - 0.5) / 0.25).log_softmax(1)
    torch.testing.assert_close(result.activations, log_probs[[0, 1], [0, 1]])
    with pytest.raises(vistool.VistoolError, match="unknown class score 'prob'"):
        render_classes(loaded, [0], size=16, steps=1, score="prob")


def test_exchange_continues_from_the_best_image_and_never_loses():
    loaded = tiny_loaded()
    options = {"size": 16, "steps": 6, "lr": 0.1, "transforms": Transforms.none(),
               "seed": 0}
    alone = render_filters(loaded, "conv", [0, 1, 2, 3], **options)
    shared = render_filters(loaded, "conv", [0, 1, 2, 3], exchange_steps=4, **options)
    assert shared.history.shape == (10, 4)
    torch.testing.assert_close(shared.history[:6], alone.history)
    assert (shared.activations >= alone.activations).all()
    with torch.no_grad():
        first = forward_until(loaded.model, (alone.images - 0.5) / 0.25, ["conv"])["conv"]
    starts = first.mean((2, 3)).amax(0)  # per channel, the best image of the first pass
    torch.testing.assert_close(shared.history[6], starts, rtol=1e-4, atol=1e-5)


def test_render_filters_rejects_bad_requests():
    loaded = tiny_loaded()
    with pytest.raises(vistool.LayerError, match="did you mean"):
        render_filters(loaded, "conv9", steps=1)
    with pytest.raises(vistool.VistoolError, match=r"channel 3 is out of range.*3 channels"):
        render_filters(loaded, "conv2", [0, 3], steps=1)
    with pytest.raises(vistool.VistoolError, match="size \\(0\\)"):
        render_filters(loaded, "conv2", [0], size=0, steps=1)
    with pytest.raises(vistool.LayerError, match="not a spatial grid"):
        render_filters(loaded, "head.2", [0], steps=1)


def test_first_layer_weights_are_the_kernels_scaled_around_grey():
    model = Tiny()
    images = first_layer_weights(model)
    weight = model.conv.weight.detach()
    assert images.shape == (4, 3, 3, 3)
    peak = weight.flatten(1).abs().amax(1)
    torch.testing.assert_close(images, weight / (2 * peak[:, None, None, None]) + 0.5)
    assert torch.isclose(images.flatten(1).amax(1) - 0.5, torch.tensor(0.5)).logical_or(
        torch.isclose(images.flatten(1).amin(1), torch.tensor(0.0))).all()
    with pytest.raises(vistool.LayerError, match="is a ReLU, not a Conv2d"):
        first_layer_weights(model, "relu")


# --- the trained shapes CNN ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shapes(trained_shapes):
    return vistool.load_model(str(trained_shapes[0]), device="cpu")


class CallsRelu(nn.Module):
    """A ReLU its model calls as a function (``F.relu``), not an ``nn.ReLU``."""

    def forward(self, x):
        return F.relu(x, inplace=True)


@pytest.fixture(scope="module", params=["nn.ReLU", "F.relu"])
def relus(request, shapes):
    """The trained shapes CNN as it is, and rebuilt with functional ReLUs."""
    if request.param == "nn.ReLU":
        return shapes
    model = copy.deepcopy(shapes.model)
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.ReLU):
            model.set_submodule(name, CallsRelu())
    return dataclasses.replace(shapes, model=model)


@pytest.fixture(scope="module")
def last_conv_filters(relus):
    # The last convolution (before its batch norm and ReLU); 64 channels. Judged on the
    # plain images, so optimised without transforms, at the model's own size, where lr 0.4
    # converges in ~100 steps; 32 exchange steps let correlated channels start from each
    # other's images (95% selective; without them 61%, ties between similar filters).
    layer = "features.12"
    return render_filters(relus, layer, size=64, steps=96, lr=0.4, seed=0, batch_size=16,
                          transforms=Transforms.none(), exchange_steps=32)


def test_each_filter_image_excites_its_own_channel_most(relus, last_conv_filters):
    shapes = relus
    from vistool.explainers.activations import activations

    result = last_conv_filters
    layer = result.layer
    x = (result.images - torch.tensor(shapes.mean).view(1, 3, 1, 1)) / torch.tensor(
        shapes.std).view(1, 3, 1, 1)
    means = activations(shapes, x, layer).layers[layer].mean((2, 3))  # (images, channels)
    own = means.diagonal()
    others = means.clone().fill_diagonal_(-float("inf")).amax(0)  # other images, per channel
    noise = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    noise_x = (noise - 0.5) / 0.25
    noise_means = activations(shapes, noise_x, layer).layers[layer].mean((2, 3)).amax(0)
    selective = (own > others) & (own >= 10 * noise_means.clamp(min=1e-3))
    assert selective.float().mean() >= 0.9, selective.float().mean()


def test_class_images_are_classified_as_their_class(shapes):
    result = render_classes(shapes, list(shapes.classes), size=64, steps=64, seed=0,
                            score="log_prob", transforms=Transforms.none())
    x = (result.images - 0.5) / 0.25
    with torch.no_grad():
        predicted = shapes.model(x).argmax(1).tolist()
    assert predicted == list(range(len(shapes.classes)))
    assert result.kind == "class" and result.targets == predicted


def test_filters_cli_writes_pngs_sheet_and_manifest(trained_shapes, tmp_path, capsys):
    out = tmp_path / "out"
    status = main(["filters", "--model", str(trained_shapes[0]), "--layer", "features.11",
                   "--channels", "0-3", "--size", "32", "--steps", "4", "--out", str(out)])
    assert status == 0
    info = json.loads((out / "manifest.json").read_text())
    assert [o["target"] for o in info["outputs"]] == [0, 1, 2, 3]
    assert {"sheet.png", "images.npy", "channel0003.png"} <= {p.name for p in out.iterdir()}
    assert info["model"]["random_weights"] is False
    status = main(["filters", "--model", str(trained_shapes[0]), "--class", "circle",
                   "--size", "32", "--steps", "2", "--out", str(tmp_path / "cls")])
    assert status == 0
    info = json.loads((tmp_path / "cls" / "manifest.json").read_text())
    assert info["outputs"][0]["name"] == "circle"


@pytest.mark.parametrize(("argv", "message"), [
    (["--layer", "features.99"], "no layer named 'features.99'"),
    (["--layer", "features.11", "--channels", "70"], "channel 70 is out of range"),
    (["--layer", "fc"], "not a spatial grid"),
    (["--class", "hexagon"], "unknown class 'hexagon'"),
    (["--channels", "1"], "one of the arguments --layer/-l --class --weights-rgb --objective "
                          "--interpolate is required"),
    (["--class", "circle", "--negative"], "--negative needs --layer or --objective"),
    (["--layer", "features.11", "--negative", "--exchange-steps", "2"],
     "--negative and --exchange-steps do not combine"),
    (["--objective", "features.12:3 + "], "objective 'features.12:3 + ': it ends too early"),
])
def test_filters_cli_bad_input_is_one_line(trained_shapes, tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    try:
        status = main(["filters", "--model", str(trained_shapes[0]), "--steps", "1",
                       "--out", str(out), *argv])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and message in err[-1]
    assert err[-1].startswith(("vistool: error:", "vistool filters: error:"))
    assert not out.exists()
