"""DeepDream: the ascent, octaves, jitter, tiles, guided objective, state, CLI and errors,
on tiny hand-built conv models (CPU, a few steps each)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import vistool
from vistool.cli import main
from vistool.core.hooks import forward_until
from vistool.synthesize import deepdream as dd
from vistool.synthesize import objectives as obj

MEAN, STD = torch.tensor([0.5] * 3).view(1, 3, 1, 1), torch.tensor([0.25] * 3).view(1, 3, 1, 1)


class Tripwire(nn.Module):
    def forward(self, x):
        raise AssertionError("the forward pass ran past the deepest dream layer")


class Probe(nn.Module):
    """Remembers the (H, W) of every input it sees."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        return x


class Dreamy(nn.Module):
    """conv 3x3 -> ReLU -> conv 3x3 -> ReLU (receptive field 5x5, no downsampling), then a
    pool and an unpadded conv (``conv3`` needs inputs of at least 6x6), then a head."""

    def __init__(self, trip: bool = False, circular: bool = False):
        super().__init__()
        torch.manual_seed(0)
        mode = "circular" if circular else "zeros"
        self.probe = Probe()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1, padding_mode=mode)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, padding_mode=mode)
        self.relu2 = nn.ReLU(inplace=True)
        self.trip = Tripwire() if trip else nn.Identity()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(4, 4, 3)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x):
        x = self.relu2(self.conv2(self.relu1(self.conv1(self.probe(x)))))
        return self.head(self.conv3(self.pool(self.trip(x))))


def loaded_model(**kwargs):
    return vistool.load_model(Dreamy(**kwargs), input_size=(3, 16, 16), mean=[0.5] * 3,
                              std=[0.25] * 3, device="cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


def photo(height=24, width=28, seed=0, low=0.3, high=0.7):
    noise = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed))
    return low + (high - low) * noise


# --- the ascent ---------------------------------------------------------------------------

def test_objective_rises_monotonically_at_every_octave():
    # jitter 0: with a random roll each step scores a differently rolled image.
    result = dd.deepdream(loaded_model(), photo(), "relu2", octaves=2, steps=6, lr=0.01,
                          jitter=0)
    history = result.history[:, 0]
    for octave in history.view(2, 6):
        assert (octave.diff() > 0).all(), octave
    assert history[-1] > 1.5 * history[0]
    acts = forward_until(Dreamy(), (result.images - MEAN) / STD, ["relu2"], gradients=False)
    assert obj.deepdream("relu2")(acts).item() > history[-1].item()  # and the last update


def test_channel_and_guided_dreams_raise_their_objectives():
    loaded = loaded_model()
    start = photo()
    channel = dd.deepdream(loaded, start, "conv2", channel=1, octaves=1, steps=5, jitter=0)
    assert channel.objective == "channel(conv2, 1)"
    assert (channel.history[:, 0].diff() > 0).all()
    guide = photo(12, 10, seed=3, low=0, high=1)
    guided = dd.deepdream(loaded, start, ["relu1", "relu2"], guide=guide, octaves=1, steps=5,
                          jitter=0)
    assert guided.objective == "guided(relu1) + guided(relu2)"
    assert (guided.history[:, 0].diff() > 0).all()


def test_guided_objective_is_the_notebooks_best_match_dot_product(monkeypatch):
    act = torch.tensor([[[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]]).view(1, 2, 1, 3)
    guide = torch.tensor([[[3.0, 0.0], [0.0, 2.0]]]).view(1, 2, 1, 2)  # vectors (3,0), (0,2)
    # positions (1,0)->(3,0): 3; (0,1)->(0,2): 2; (2,-1)->(3,0): 6. Mean 11/3.
    act.requires_grad_(True)
    value = dd.guided("a", guide)({"a": act})
    assert value.item() == pytest.approx(11 / 3)
    (grad,) = torch.autograd.grad(value.sum(), act)
    expected = torch.tensor([[3.0, 0.0, 3.0], [0.0, 2.0, 0.0]]).view(1, 2, 1, 3) / 3
    torch.testing.assert_close(grad, expected)  # the best-matching guide vector, as Google's
    monkeypatch.setattr(dd, "_MATCH_CHUNK", 2)  # one position at a time: the same answer
    assert dd.guided("a", guide)({"a": act}).item() == pytest.approx(11 / 3)


def test_detail_is_carried_from_octave_to_octave(monkeypatch):
    starts = []

    def fake_step(model, objective, images, generator, ascent):
        starts.append(images.clone())
        return images + 0.01, images.new_zeros(images.shape[0])

    monkeypatch.setattr(dd, "_step", fake_step)
    image = photo(30, 42)
    result = dd.deepdream(loaded_model(), image, "relu2", octaves=3, octave_scale=1.5, steps=2)
    assert result.sizes == [(13, 19), (20, 28), (30, 42)]
    # Each octave starts from its own base plus all the detail added below it.
    for octave, size in enumerate(result.sizes):
        base = dd._resize(image, size)
        torch.testing.assert_close(starts[2 * octave], base + 0.02 * octave, atol=1e-6, rtol=0)
    torch.testing.assert_close(result.images, image + 0.06, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("size", "octaves", "tile"), [
    ((23, 37), 1, 512), ((23, 37), 3, 10), ((40, 33), 2, 16), ((17, 50), 4, 7), ((9, 9), 2, 4)])
def test_output_has_the_input_size_for_any_octaves_and_tiles(size, octaves, tile):
    result = dd.deepdream(loaded_model(), photo(*size), "relu2", octaves=octaves, steps=1,
                          tile=tile, jitter=3)
    assert result.images.shape == (1, 3, *size)
    assert [tuple(o.shape[-2:]) for o in result.octaves] == result.sizes
    assert result.sizes[-1] == size and len(result.sizes) == octaves
    assert result.sizes == sorted(result.sizes)
    assert result.history.shape == (octaves, 1)
    assert 0 <= result.images.min() <= result.images.max() <= 1


def test_roll_helper_is_its_own_exact_inverse_and_lr_zero_changes_nothing():
    image = photo(13, 17)
    for shift in [(0, 0), (3, -5), (-32, 32), (100, 7)]:
        assert torch.equal(dd.roll(dd.roll(image, shift), shift, inverse=True), image)
    assert torch.equal(dd.roll(image, (1, 0))[..., 1:, :], image[..., :-1, :])
    result = dd.deepdream(loaded_model(), image, "relu2", octaves=3, steps=3, lr=0.0,
                          jitter=32, tile=8)
    assert torch.equal(result.images, image)  # bit-identical after 9 rolled steps


def test_the_gradient_is_rolled_back_to_the_pixels_it_belongs_to():
    # With circular padding the network commutes with rolls: a rolled, stepped and unrolled
    # image equals the image stepped without a roll, if and only if the roll is undone.
    loaded = loaded_model(circular=True)
    image = photo(16, 20)
    still = dd.deepdream(loaded, image, "relu2", octaves=1, steps=2, lr=0.05, jitter=0)
    rolled = dd.deepdream(loaded, image, "relu2", octaves=1, steps=2, lr=0.05, jitter=7)
    torch.testing.assert_close(rolled.images, still.images, atol=1e-5, rtol=0)
    assert (still.images - image).abs().max() > 0.05


def test_tiled_and_untiled_gradients_agree_away_from_the_cuts():
    model = Dreamy()
    objective = obj.deepdream("relu2")
    image = photo(40, 40)
    whole, value = dd.tiled_gradient(model, objective, image, 64, MEAN, STD)
    tiled, tiled_value = dd.tiled_gradient(model, objective, image, 16, MEAN, STD)
    assert model.probe.seen[-9:] == [(16, 16)] * 9  # 3x3 tiles of 16 (the last overlapping)
    # Tiles own rows/columns [0, 16), [16, 32), [32, 40): the cuts are at 16 and 32. Two 3x3
    # convolutions reach 2 + 2 pixels, so pixels 4 or more away from a cut see no cut.
    far = torch.ones(40, dtype=torch.bool)
    for cut in (16, 32):
        far[cut - 4:cut + 4] = False
    mask = far[:, None] & far[None, :]
    scale = whole.abs().max()
    torch.testing.assert_close(tiled[..., mask] / scale, whole[..., mask] / scale, atol=1e-5,
                               rtol=0)
    assert (tiled[..., ~mask] - whole[..., ~mask]).abs().max() > 0.1 * scale  # cuts do show
    assert tiled_value.item() == pytest.approx(value.item(), rel=0.05)


def test_tiles_bound_what_the_network_sees_at_once():
    loaded = loaded_model()
    dd.deepdream(loaded, photo(50, 70), "relu2", octaves=2, steps=2, tile=16)
    seen = loaded.model.probe.seen
    assert seen and max(h for h, _ in seen) == 16 and max(w for _, w in seen) == 16


def test_smoothing_blurs_the_gradient():
    flat = torch.full((1, 3, 9, 9), 0.25)
    torch.testing.assert_close(dd._gaussian(flat, 1.5), flat)
    checker = (torch.arange(12)[:, None] + torch.arange(12)[None, :]) % 2 * 1.0
    checker = checker.expand(1, 3, 12, 12)
    assert dd._gaussian(checker, 1.0).std() < 0.05 * checker.std()
    rough = dd.deepdream(loaded_model(), photo(), "relu2", octaves=1, steps=3, lr=0.05)
    smooth = dd.deepdream(loaded_model(), photo(), "relu2", octaves=1, steps=3, lr=0.05,
                          smooth=2.0)

    def roughness(result):
        change = result.images - photo()
        return (change[..., 1:, :] - change[..., :-1, :]).abs().mean()

    assert roughness(smooth) < 0.5 * roughness(rough)


# --- determinism, state, truncation ------------------------------------------------------

def test_same_seed_same_dream_and_another_seed_another():
    loaded = loaded_model()
    first = dd.deepdream(loaded, photo(), "relu2", octaves=2, steps=3, jitter=5, seed=4)
    again = dd.deepdream(loaded, photo(), "relu2", octaves=2, steps=3, jitter=5, seed=4)
    other = dd.deepdream(loaded, photo(), "relu2", octaves=2, steps=3, jitter=5, seed=5)
    assert torch.equal(first.images, again.images)
    assert torch.equal(first.history, again.history)
    assert not torch.equal(first.images, other.images)


def _state(model):
    return ([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()],
            [p.grad for p in model.parameters()],
            [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()])


def test_model_comes_back_unchanged_and_no_hooks_remain():
    loaded = loaded_model(trip=True)  # also: nothing past relu2 runs
    model = loaded.model
    model.train()
    model.conv1.weight.requires_grad_(False)
    model.conv2.weight.grad = torch.ones_like(model.conv2.weight)
    model.conv1.register_forward_hook(lambda *_: None)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    before = _state(model)
    dd.deepdream(loaded, photo(), ["relu1", "relu2"], octaves=2, steps=2, guide=photo(8, 8))
    with pytest.raises(vistool.VistoolError):
        dd.deepdream(loaded, photo(), "relu2", channel=99)
    after = _state(model)
    assert after[:2] == before[:2]
    assert all(a is b for a, b in zip(after[2], before[2]))
    assert after[3] == before[3]
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


# --- errors -------------------------------------------------------------------------------

@pytest.mark.parametrize(("kwargs", "message"), [
    ({"steps": 0}, r"steps \(0\).*must be at least 1"),
    ({"octaves": 0}, r"octaves \(0\)"),
    ({"tile": 0}, r"tile \(0\)"),
    ({"octave_scale": 1.0}, "octave scale .* must be above 1"),
    ({"lr": -0.1}, r"lr \(-0.1\)"),
    ({"layers": "relu3"}, "no layer named 'relu3'.*did you mean 'relu2', 'relu1'"),
    ({"layers": []}, "no layers given"),
    ({"channel": 4, "layers": "conv2"}, r"channel 4 is out of range.*4 channels \(0-3\)"),
    ({"channel": 0, "guide": torch.rand(1, 3, 8, 8)}, "either a channel or a guide"),
    ({"guide": torch.rand(1, 1, 8, 8)}, "the guide must be"),
    ({"guide": torch.rand(1, 3, 4, 5), "layers": "conv3"}, r"the guide \(4x5\) is too small"),
    ({"layers": "head.1", "channel": 0}, r"outputs shape \(1, 4\), not \(N, C, H, W\)"),
])
def test_bad_options_are_one_clear_error(kwargs, message):
    options = {"layers": "relu2", "octaves": 1, "steps": 1, **kwargs}
    with pytest.raises(vistool.VistoolError, match=message):
        dd.deepdream(loaded_model(), photo(), **options)


@pytest.mark.parametrize(("images", "message"), [
    (torch.rand(3, 8, 8), r"must be a batch \(N, C, H, W\)"),
    (torch.rand(1, 3, 0, 8), "are empty"),
    (torch.rand(1, 1, 8, 8), "1 channels, the model takes 3"),
    (torch.rand(1, 3, 8, 8) * 2 - 0.5, r"must be in \[0, 1\]"),
])
def test_bad_images_are_one_clear_error(images, message):
    with pytest.raises(vistool.ImageError, match=message):
        dd.deepdream(loaded_model(), images, "relu2", octaves=1, steps=1)


def test_octaves_that_shrink_below_the_network_minimum_say_what_fixes_them():
    loaded = loaded_model()
    image = photo(30, 40)
    with pytest.raises(vistool.VistoolError) as caught:
        dd.deepdream(loaded, image, "conv3", octaves=5, octave_scale=1.6, steps=1)
    message = str(caught.value)
    assert "smallest octave is 5x6" in message and "6x6 pixels" in message
    assert "use `octaves=4` or fewer, or `octave_scale=1.49` or less" in message
    dd.deepdream(loaded, image, "conv3", octaves=4, octave_scale=1.6, steps=1)  # fixes it
    dd.deepdream(loaded, image, "conv3", octaves=5, octave_scale=1.49, steps=1)  # so does this
    with pytest.raises(vistool.ImageError, match="image is 5x40, smaller than the 6x6"):
        dd.deepdream(loaded, photo(5, 40), "conv3", octaves=1, steps=1)
    with pytest.raises(vistool.VistoolError, match="use `tile=6` or more"):
        dd.deepdream(loaded, image, "conv3", octaves=1, steps=1, tile=5)


# --- command line -------------------------------------------------------------------------

FACTORY = """
import torch
from torch import nn


def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2))
"""


@pytest.fixture
def factory(tmp_path):
    path = tmp_path / "tiny.py"
    path.write_text(FACTORY)
    return f"{path}:make"


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "cat photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(60, 200, (29, 37, 3), dtype=np.uint8)).save(path)
    return path


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_cli_writes_the_dream_octaves_and_a_manifest_that_says_random(capsys, tmp_path,
                                                                      factory, image_file):
    out = tmp_path / "out"
    status, stdout, _ = run(capsys, "deepdream", "--model", factory, "--weights", "none",
                            "--device", "cpu", "--layer", "3", "--layer", "1",
                            "--octaves", "3", "--steps", "2", "--tile", "16", "--guide",
                            image_file, "--out", out, image_file)
    assert status == 0
    assert stdout.strip() == (f"wrote 3 images (1 dreamed, 2 octaves) to {out} (random "
                              "weights: the pictures show an untrained model)")
    info = json.loads((out / "manifest.json").read_text())
    assert info["kind"] == "deepdream" and info["model"]["random_weights"] is True
    assert info["options"]["layers"] == ["3", "1"] and info["options"]["tile"] == 16
    pngs = [item["png"] for item in info["outputs"]]
    assert pngs == ["000-cat_photo-octave1.png", "000-cat_photo-octave2.png",
                    "000-cat_photo.png"]
    assert Image.open(out / "000-cat_photo.png").size == (37, 29)  # the input's size
    sizes = [Image.open(out / png).size for png in pngs[:2]]
    assert sizes == [(19, 15), (26, 21)]
    assert all("random weights" in item["caption"] for item in info["outputs"])
    final = info["outputs"][-1]["objective"]
    assert final["last"] > final["first"]
    assert np.load(out / "history.npy").shape == (1, 6)


def test_cli_json_prints_the_manifest(capsys, tmp_path, factory, image_file):
    status, stdout, _ = run(capsys, "deepdream", "-m", factory, "--weights", "none",
                            "--device", "cpu", "-l", "1", "--octaves", "1", "--steps", "1",
                            "--channel", "2", "--out", tmp_path / "out", "--json", image_file)
    assert status == 0
    info = json.loads(stdout)
    assert info["options"]["channel"] == 2
    assert [item["png"] for item in info["outputs"]] == ["000-cat_photo.png"]


@pytest.mark.parametrize(("args", "message"), [
    (["missing.png"], "image 'missing.png' does not exist"),
    (["-l", "9"], "no layer named '9'"),
    (["--octaves", "6"], "smallest octave is 5x7.*6x6 pixels.*use --octaves 5 or fewer"),
    (["--octave-scale", "0.5"], "octave scale .* must be above 1"),
    (["--guide", "nope.png"], "image 'nope.png' does not exist"),
])
def test_cli_mistakes_are_one_line_with_status_2(capsys, tmp_path, factory, image_file, args,
                                                 message):
    argv = ["deepdream", "-m", factory, "--weights", "none", "--device", "cpu", "-l", "3",
            "--steps", "1", "--out", tmp_path / "out", *args]
    if not args[0].endswith(".png"):
        argv.append(image_file)
    status, _, err = run(capsys, *argv)
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("vistool: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


def test_cli_unreadable_image_and_zero_steps(capsys, tmp_path, factory):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png at all")
    status, _, err = run(capsys, "deepdream", "-m", factory, "--weights", "none", "-l", "3",
                         broken)
    assert status == 2 and "is not an image" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as caught:
        main(["deepdream", "-m", factory, "-l", "3", "--steps", "0", str(broken)])
    assert caught.value.code == 2
    assert "--steps: must be at least 1, got 0" in capsys.readouterr().err
