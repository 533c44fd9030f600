"""Neural style transfer (Gatys): Gram matrices, losses by hand, the paper's layer names,
size-free losses, the optimisers, colour preservation, coarse-to-fine, the model left as it
was, and the ``vistool style`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from skimage import data as skdata
from torch import nn

import vistool
from vistool.cli import main
from vistool.cli import style as style_cli
from vistool.core.hooks import forward_until
from vistool.synthesize import style as st
from vistool.synthesize.style import (
    gram_matrix,
    match_color,
    paper_layer_names,
    resolve_style_layers,
    style_transfer,
)

TINY_CONTENT, TINY_STYLE = ("conv2_1",), ("conv1_1", "conv2_1", "conv3_1")
YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


pytestmark = pytest.mark.usefixtures("one_thread")


def circular_net() -> nn.Sequential:
    """A small VGG-like net with circular padding: a periodic image's features are periodic,
    so a texture tiled 2x2 has exactly the texture's statistics. Paper names: conv1_1 = 0,
    conv1_2 = 2, conv2_1 = 5, conv3_1 = 8."""

    def conv(cin, cout):
        return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="circular")

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(conv(3, 8), nn.ReLU(inplace=True), conv(8, 8),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2), conv(8, 16),
                             nn.ReLU(inplace=True), nn.MaxPool2d(2), conv(16, 16),
                             nn.ReLU(inplace=True))


def tiny_loaded(model: nn.Module | None = None):
    return vistool.load_model(model or circular_net(), input_size=(3, 32, 32),
                              mean=[0.45] * 3, std=[0.25] * 3, device="cpu")


def picture(name: str, size: int | tuple[int, int]) -> torch.Tensor:
    """A scikit-image picture as (1, 3, H, W) in [0, 1], resized to ``size``."""
    array = getattr(skdata, name)()
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, 2)
    image = torch.from_numpy(array).permute(2, 0, 1)[None].float() / 255
    size = (size, size) if isinstance(size, int) else size
    return F.interpolate(image, size=size, mode="bilinear", antialias=True).clamp(0, 1)


def tiny_run(loaded, content, styles, **options):
    options = {"content_layers": TINY_CONTENT, "style_layers": TINY_STYLE, "steps": 8,
               **options}
    return style_transfer(loaded, content, styles, **options)


@pytest.fixture(scope="module")
def vgg19():
    with torch.random.fork_rng():
        torch.manual_seed(0)  # the same random weights in every run
        return vistool.load_model("vgg19", weights="none", device="cpu")


# --- the losses ---------------------------------------------------------------------------

def test_gram_matrix_matches_a_hand_computed_example():
    features = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 1.0, 0.0, 1.0]]).reshape(1, 2, 2, 2)
    expected = torch.tensor([[30.0, 6.0], [6.0, 2.0]]) / (2 * 2 * 2)  # F F^T / (C H W)
    torch.testing.assert_close(gram_matrix(features), expected[None])
    batch = torch.cat([features, 2 * features])
    torch.testing.assert_close(gram_matrix(batch), torch.stack([expected, 4 * expected]))


def test_gram_and_style_loss_do_not_depend_on_image_size_for_a_tiled_texture():
    loaded = tiny_loaded()
    texture, other = picture("brick", 32), picture("coffee", 32)
    tiled = texture.repeat(1, 1, 2, 2)  # 64x64, periodic
    layers = resolve_style_layers(loaded.model, TINY_STYLE)
    with torch.no_grad():
        small = forward_until(loaded.model, texture, layers, gradients=False)
        large = forward_until(loaded.model, tiled, layers, gradients=False)
    for name in layers:
        assert large[name].shape[-1] == 2 * small[name].shape[-1]
        torch.testing.assert_close(gram_matrix(large[name]), gram_matrix(small[name]),
                                   rtol=1e-4, atol=1e-6)
    once = tiny_run(loaded, texture, [other], steps=1).history[0, 2]
    twice = tiny_run(loaded, tiled, [other], steps=1).history[0, 2]
    assert once > 0
    torch.testing.assert_close(twice, once, rtol=1e-4, atol=0)


@pytest.mark.parametrize(("columns", "tv"), [("stripes", 0.5), ("checker", 1.0)])
def test_losses_of_the_first_image_by_hand(columns, tv):
    loaded = tiny_loaded()
    y, x = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    pattern = x % 2 if columns == "stripes" else (x + y) % 2
    content = (0.2 + 0.5 * pattern.float()).expand(1, 3, 8, 8)  # neighbours differ by 0.5
    style = picture("chelsea", 16)
    result = tiny_run(loaded, content, [style], steps=1, content_weight=3.0, style_weight=10.0,
                      tv_weight=2.0)
    names = resolve_style_layers(loaded.model, TINY_STYLE)
    norm = torch.tensor(loaded.mean).view(1, 3, 1, 1), torch.tensor(loaded.std).view(1, 3, 1, 1)
    with torch.no_grad():
        mine = forward_until(loaded.model, (content - norm[0]) / norm[1], names, False)
        theirs = forward_until(loaded.model, (style - norm[0]) / norm[1], names, False)
    style_loss = sum(((gram_matrix(mine[n]) - gram_matrix(theirs[n])) ** 2).mean() for n in names)
    expected = torch.tensor([0.0, 10.0 * style_loss, 2.0 * tv])  # content: it starts there
    torch.testing.assert_close(result.history[0, 1:], expected, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(result.history[0, 0], expected.sum(), rtol=1e-5, atol=1e-7)


# --- layer names --------------------------------------------------------------------------

def test_paper_names_map_to_vgg19_modules_and_unknown_names_are_one_line(vgg19):
    names = paper_layer_names(vgg19.model)
    expected = {"conv1_1": "features.0", "conv1_2": "features.2", "conv2_1": "features.5",
                "conv3_1": "features.10", "conv3_4": "features.16", "conv4_1": "features.19",
                "conv4_2": "features.21", "conv5_1": "features.28", "conv5_4": "features.34",
                "relu4_2": "features.22"}
    assert {k: names[k] for k in expected} == expected
    assert len([k for k in names if k.startswith("conv")]) == 16
    assert resolve_style_layers(vgg19.model, ["conv4_2", "features.21", "features.22"]) == [
        "features.21", "features.21", "features.22"]
    with pytest.raises(vistool.LayerError) as raised:
        resolve_style_layers(vgg19.model, ["conv5_1", "conv6_1"])
    message = str(raised.value)
    assert "no layer named 'conv6_1'" in message and "did you mean" in message
    assert "'conv5_1'" in message and "\n" not in message


# --- optimisation -------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 64])
def test_default_loss_falls_by_90_percent_at_any_size_and_the_model_is_unchanged(vgg19, size):
    model = vgg19.model
    flags = [m.training for m in model.modules()]
    content, style = picture("chelsea", size), picture("brick", (size * 3 // 4, size))
    result = style_transfer(vgg19, content, [style], steps=12)
    assert result.history.shape == (12, 4) and result.image.shape == content.shape
    assert result.final[0] <= 0.1 * result.history[0, 0]
    assert result.image.min() >= 0 and result.image.max() <= 1
    assert result.layers == {"content": ["features.21"], "style": [
        "features.0", "features.5", "features.10", "features.19", "features.28"]}
    assert [m.training for m in model.modules()] == flags
    assert all(p.requires_grad and p.grad is None for p in model.parameters())
    assert all(not m._forward_hooks for m in model.modules())


def test_the_loss_scale_does_not_matter():
    loaded = tiny_loaded()
    content, style = picture("chelsea", 32), picture("brick", 32)
    plain = tiny_run(loaded, content, [style], steps=10)
    tiny = tiny_run(loaded, content, [style], steps=10, content_weight=1e-9, style_weight=1e-3)
    assert tiny.history[0, 0] < 1e-6  # torch's absolute tolerances alone would stop here
    assert tiny.final[0] <= 0.1 * tiny.history[0, 0]
    relative = tiny.history[:, 0] / tiny.history[0, 0]
    torch.testing.assert_close(relative, plain.history[:, 0] / plain.history[0, 0],
                               rtol=1e-3, atol=1e-5)


def test_lbfgs_and_adam_run_and_the_seed_fixes_the_image():
    loaded = tiny_loaded()
    content, style = picture("coffee", 24), picture("grass", 24)
    first = tiny_run(loaded, content, [style], init="noise", seed=3)
    again = tiny_run(loaded, content, [style], init="noise", seed=3)
    other = tiny_run(loaded, content, [style], init="noise", seed=4)
    torch.testing.assert_close(first.image, again.image, rtol=0, atol=0)
    assert not torch.equal(first.image, other.image)
    assert first.final[0] < 0.5 * first.history[0, 0]
    adam = tiny_run(loaded, content, [style], optimizer="adam", steps=20, lr=0.05)
    assert adam.history.shape == (20, 4) and adam.final[0] < 0.5 * adam.history[0, 0]
    from_style = tiny_run(loaded, content, [style], init="style", steps=1)
    assert from_style.history[0, 2] == 0  # starting at the style, its Grams match


def test_several_styles_blend_their_gram_targets():
    loaded = tiny_loaded()
    content, first, second = picture("chelsea", 24), picture("brick", 24), picture("coffee", 32)
    alone = tiny_run(loaded, content, [first])
    only_first = tiny_run(loaded, content, [first, second], style_weights=[1.0, 0.0])
    torch.testing.assert_close(only_first.image, alone.image, rtol=0, atol=1e-6)
    blend = tiny_run(loaded, content, [first, second], style_weights=[0.7, 0.3], steps=1)
    names = resolve_style_layers(loaded.model, TINY_STYLE)
    mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
    std = torch.tensor(loaded.std).view(1, 3, 1, 1)
    with torch.no_grad():
        feats = [forward_until(loaded.model, (x - mean) / std, names, False)
                 for x in (content, first, second)]
    expected = sum(((gram_matrix(feats[0][n]) - 0.7 * gram_matrix(feats[1][n])
                     - 0.3 * gram_matrix(feats[2][n])) ** 2).mean() for n in names)
    torch.testing.assert_close(blend.history[0, 2], 1e6 * expected, rtol=1e-5, atol=0)
    with pytest.raises(vistool.VistoolError, match="do not fit 2 style"):
        tiny_run(loaded, content, [first, second], style_weights=[1.0])


def test_luminance_preservation_keeps_the_result_luminance_and_the_content_chroma():
    loaded = tiny_loaded()
    content = 0.25 + 0.5 * picture("astronaut", 32)  # away from 0 and 1: no clamping
    style = picture("rocket", 32)
    plain = tiny_run(loaded, content, [style])
    kept = tiny_run(loaded, content, [style], preserve_color="luminance")
    inside = ((kept.image > 0) & (kept.image < 1)).all(1)
    assert inside.float().mean() > 0.9

    def yiq(image):
        return torch.einsum("dc,nchw->ndhw", YIQ, image)

    torch.testing.assert_close(yiq(kept.image)[:, 0][inside], yiq(plain.image)[:, 0][inside],
                               rtol=0, atol=1e-5)
    chroma = yiq(kept.image)[:, 1:].permute(0, 2, 3, 1)[inside]
    torch.testing.assert_close(chroma, yiq(content)[:, 1:].permute(0, 2, 3, 1)[inside],
                               rtol=0, atol=1e-5)
    assert not torch.allclose(kept.image, plain.image, atol=1e-3)


def test_histogram_preservation_gives_the_styles_the_content_colour_statistics():
    content = 0.3 + 0.4 * picture("chelsea", 32)
    style = 0.45 + 0.1 * picture("rocket", (24, 40))  # matched colours stay inside [0, 1]

    def stats(image):
        pixels = image[0].reshape(3, -1).double()
        return pixels.mean(1), torch.cov(pixels, correction=0)

    matched = match_color(style, content)
    assert matched.shape == style.shape and matched.min() > 0 and matched.max() < 1
    for ours, theirs in zip(stats(matched), stats(content)):
        torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-5)
    loaded = tiny_loaded()
    histogram = tiny_run(loaded, content, [style], preserve_color="histogram")
    by_hand = tiny_run(loaded, content, [matched])
    torch.testing.assert_close(histogram.image, by_hand.image, rtol=0, atol=1e-6)
    assert not torch.allclose(histogram.image, tiny_run(loaded, content, [style]).image)


def test_coarse_to_fine_starts_each_scale_from_the_previous_result():
    loaded = tiny_loaded()
    content, style = picture("chelsea", (24, 32)), picture("brick", 32)
    single = tiny_run(loaded, content, [style])
    coarse = tiny_run(loaded, content, [style], scales=[16, 32])
    assert coarse.sizes == [(12, 16), (24, 32)] and coarse.scale_starts == [0, 8]
    assert coarse.image.shape[-2:] == (24, 32) and coarse.history.shape == (16, 4)
    assert coarse.history[8, 0] < 0.5 * single.history[0, 0]  # upsampled, already styled
    with pytest.raises(vistool.VistoolError, match="scales"):
        tiny_run(loaded, content, [style], scales=[0, 32])


def test_average_pooling_uses_a_copy_and_the_callers_model_comes_back_as_it_was():
    net = circular_net().train()
    net[2].requires_grad_(False)
    grad = torch.ones_like(net[0].weight)
    net[0].weight.grad = grad
    seen = []
    net[5].register_forward_hook(lambda *_: seen.append(1))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loaded = tiny_loaded(net)
    content, style = picture("chelsea", 16), picture("brick", 16)
    average = tiny_run(loaded, content, [style], pooling="avg", steps=3)
    maximum = tiny_run(loaded, content, [style], pooling="max", steps=3)
    assert not torch.allclose(average.image, maximum.image)
    assert all(m.training for m in net.modules())
    assert [p.requires_grad for p in net.parameters()] == [True, True, False, False, True,
                                                           True, True, True]
    assert net[0].weight.grad is grad and net[5].bias.grad is None
    assert isinstance(net[4], nn.MaxPool2d) and isinstance(net[7], nn.MaxPool2d)
    assert [len(m._forward_hooks) for m in net.modules()] == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0]
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


def test_bad_options_are_one_line_errors():
    loaded = tiny_loaded()
    content, style = picture("chelsea", 16), picture("brick", 16)
    for options, message in [({"optimizer": "sgd"}, "unknown optimizer 'sgd'"),
                             ({"init": "zeros"}, "unknown init"),
                             ({"steps": 0}, "must be positive"),
                             ({"style_weight": -1.0}, "non-negative"),
                             ({"style_layers": ("conv9_9",)}, "no layer named 'conv9_9'")]:
        with pytest.raises(vistool.VistoolError, match=message):
            tiny_run(loaded, content, [style], **options)
    with pytest.raises(vistool.VistoolError, match=r"\(1, 3, H, W\)"):
        tiny_run(loaded, content[0], [style])
    with pytest.raises(vistool.VistoolError, match="too small"):
        tiny_run(loaded, content[..., :2, :2], [style])


# --- the command --------------------------------------------------------------------------

def write_picture(path, name, size):
    array = (picture(name, size)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return str(path)


def test_style_cli_writes_image_loss_curve_and_manifest_and_says_weights_are_random(
        tmp_path, capsys):
    content = write_picture(tmp_path / "content.png", "chelsea", (48, 64))
    first = write_picture(tmp_path / "a.png", "brick", 40)
    second = write_picture(tmp_path / "b.png", "coffee", 40)
    out = tmp_path / "out"
    status = main(["style", content, first, second, "--style-weights", "0.7,0.3",
                   "--weights", "none", "--scales", "32,48", "--steps", "2",
                   "--preserve-color", "luminance", "--device", "cpu", "--out", str(out)])
    assert status == 0
    stdout = capsys.readouterr().out
    assert "wrote result.png, loss.png and manifest.json" in stdout
    assert "random weights" in stdout
    assert {"result.png", "result.npy", "loss.png", "losses.npy", "manifest.json"} == {
        p.name for p in out.iterdir()}
    info = json.loads((out / "manifest.json").read_text())
    assert info["model"]["random_weights"] is True and info["model"]["spec"] == "vgg19"
    assert info["options"]["sizes"] == [[24, 32], [36, 48]]
    assert info["options"]["style_weights"] == [0.7, 0.3]
    assert np.load(out / "result.npy").shape == (1, 3, 36, 48)
    assert np.load(out / "losses.npy").shape == (4, 4)
    assert Image.open(out / "loss.png").size == (640, 400)


@pytest.mark.parametrize(("argv", "message"), [
    (["missing.png"], "does not exist"),
    (["broken.png"], "broken.png"),
    (["style.png", "--style-layers", "conv1_1,conv7_1"], "no layer named 'conv7_1'"),
    (["style.png", "--size", "0"], "--size: must be at least 1, got 0"),
    (["style.png", "--scales", "16,0"], "sizes must be at least 1"),
    (["style.png", "--style-weights", "1,2"], "do not fit 1 style"),
    (["style.png", "--style-weight", "-3"], "must be at least 0"),
])
def test_style_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, argv, message):
    (tmp_path / "net.py").write_text(
        "from torch import nn\n\n"
        "def make():\n"
        "    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),\n"
        "                         nn.Conv2d(4, 4, 3, padding=1))\n")
    content = write_picture(tmp_path / "content.png", "chelsea", 16)
    write_picture(tmp_path / "style.png", "brick", 16)
    (tmp_path / "broken.png").write_text("not an image")
    out = tmp_path / "out"
    argv = [str(tmp_path / a) if a.endswith(".png") else a for a in argv]
    try:
        status = main(["style", content, argv[0], "--model", f"{tmp_path / 'net.py'}:make",
                       "--content-layers", "conv2_1", "--style-layers", "conv1_1",
                       "--size", "16", "--steps", "1", "--out", str(out), *argv[1:]])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and message in err[-1]
    assert err[-1].startswith(("vistool: error:", "vistool style: error:"))
    assert not out.exists()


def test_cli_choices_are_the_librarys():
    assert style_cli.OPTIMIZERS == st.OPTIMIZERS and style_cli.INITS == st.INITS
    assert style_cli.COLOR_MODES == st.COLOR_MODES and style_cli.POOLINGS == st.POOLINGS
