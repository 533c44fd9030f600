"""Feed-forward style transfer (Johnson et al.): the transformer network at any size, the
perceptual loss by hand, the frozen loss network, the ``fast-style`` recipe, reloading and
``vistool style --fast``."""

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
from trainers.data import load_data
from trainers.loop import TrainConfig, train
from trainers.models import get_model
from trainers.recipes import run_recipe
from trainers.tasks import StyleTask
from vistool.cli import main
from vistool.core.checkpoint import save_checkpoint
from vistool.core.hooks import forward_until
from vistool.synthesize.fast_style import PerceptualLoss, TransformerNet, as_stylizer, stylize
from vistool.synthesize.style import gram_matrix

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_vgg16() -> nn.Sequential:
    """VGG16's layout (2, 2, 3, 3 convolutions per block, each followed by a ReLU, blocks
    ending in max pooling) with 4 channels: relu2_2 = module 8, relu4_3 = module 22."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        layers: list[nn.Module] = []
        cin = 3
        for convs in (2, 2, 3, 3):
            for _ in range(convs):
                layers += [nn.Conv2d(cin, 4, 3, padding=1), nn.ReLU(inplace=True)]
                cin = 4
            layers.append(nn.MaxPool2d(2))
        return nn.Sequential(*layers)


def tiny_loss_net():
    return vistool.load_model(tiny_vgg16(), input_size=(3, 32, 32), mean=[0.45] * 3,
                              std=[0.25] * 3, device="cpu")


def picture(name: str, size: tuple[int, int]) -> torch.Tensor:
    array = getattr(skdata, name)()
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, 2)
    image = torch.from_numpy(array[..., :3]).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=size, mode="bilinear", antialias=True).clamp(0, 1)


def write_picture(path, name: str, size: tuple[int, int]) -> str:
    array = (picture(name, size)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return str(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A handful of training photographs in nested folders, and a style image."""
    root = tmp_path_factory.mktemp("fast-style")
    names = ["astronaut", "coffee", "chelsea", "rocket", "camera", "coins", "horse", "moon"]
    for i, name in enumerate(names):
        folder = root / "data" / ("a" if i % 2 else "b")
        folder.mkdir(parents=True, exist_ok=True)
        write_picture(folder / f"{name}.png", name, (48, 48))
    return root / "data", write_picture(root / "style.png", "brick", (48, 48))


# --- the network and the loss -------------------------------------------------------------

@pytest.mark.parametrize("size", [(8, 8), (37, 51), (64, 40)])
def test_transformer_returns_the_input_size_and_stylize_clamps(size):
    net = TransformerNet(width=8, blocks=2).train()
    x = torch.rand(2, 3, *size)
    assert net(x).shape == x.shape
    out = stylize(net, x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert net.training  # the flag comes back


@pytest.mark.parametrize(("shape", "message"), [
    ((1, 3, 7, 20), "too small to stylise; give at least 8 pixels"),
    ((1, 1, 32, 32), "must be (N, 3, H, W)"),
])
def test_stylize_refuses_bad_images_in_one_line(shape, message):
    with pytest.raises(vistool.VistoolError, match=message.replace("(", r"\(").replace(")", r"\)")):
        stylize(TransformerNet(width=4, blocks=1), torch.rand(shape))


def test_perceptual_loss_parts_by_hand_and_blended_styles():
    loaded = tiny_loss_net()
    styles = [picture("brick", (32, 32)), picture("coffee", (24, 40))]
    loss = PerceptualLoss(loaded, styles, style_weights=[3, 1], content_weight=2.0,
                          style_weight=5.0, tv_weight=0.5)
    assert loss.content_layers == ["8"] and loss.style_layers == ["3", "8", "15", "22"]

    def norm(x):
        return (x - 0.45) / 0.25

    with torch.no_grad():
        feats = [forward_until(loaded.model, norm(s), loss.style_layers) for s in styles]
        for i, name in enumerate(loss.style_layers):
            expected = 0.75 * gram_matrix(feats[0][name]) + 0.25 * gram_matrix(feats[1][name])
            torch.testing.assert_close(loss.grams[i], expected)
    inputs, generated = picture("chelsea", (32, 32)), picture("astronaut", (32, 32))
    with torch.no_grad():
        got = loss(generated, inputs)
        g = forward_until(loaded.model, norm(generated), loss.style_layers)
        c = forward_until(loaded.model, norm(inputs), ["8"])["8"]
    content = F.mse_loss(g["8"], c)
    style = sum(F.mse_loss(gram_matrix(g[n]), t) for n, t in zip(loss.style_layers, loss.grams))
    tv = ((generated[..., 1:, :] - generated[..., :-1, :]).abs().mean()
          + (generated[..., 1:] - generated[..., :-1]).abs().mean())
    expected = torch.stack([2 * content, 5 * style, 0.5 * tv])
    torch.testing.assert_close(got, torch.cat([expected.sum()[None], expected]))
    one = PerceptualLoss(loaded, styles[:1])
    with torch.no_grad():
        assert float(one(styles[0], styles[0])[0]) == 0.0  # the style itself: nothing to do


def test_the_loss_network_is_frozen_and_gets_no_gradient():
    loaded = tiny_loss_net()
    loss = PerceptualLoss(loaded, [picture("brick", (32, 32))])
    net = TransformerNet(width=4, blocks=1)
    x = torch.rand(2, 3, 32, 32)
    loss(net(x), x)[0].backward()
    assert all(p.grad is not None for p in net.parameters())
    assert all(p.grad is None and not p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training


# --- training and reloading -----------------------------------------------------------------

def test_one_epoch_of_the_recipe_lowers_the_perceptual_loss(images, tmp_path):
    data, style = images
    result = run_recipe("fast-style", tmp_path / "run", data_dir=str(data), style=[style],
                        pretrained=False, image_size=32, epochs=1, batch_size=1,
                        progress=False, log=lambda _line: None)
    assert result["val_loss"] < 0.6 * result["initial"]["val_loss"], result
    meta = vistool.load_model(tmp_path / "run" / "best.safetensors").metadata
    assert meta["recipe"] == "fast-style" and meta["loss_network"]["random_weights"] is True
    assert meta["layers"] == {"content": ["features.8"], "style": [
        "features.3", "features.8", "features.15", "features.22"]}
    assert [s["path"] for s in meta["styles"]] == [style]


def test_the_saved_model_reloads_with_the_same_forward_at_any_size(images, tmp_path):
    data, _ = images
    spec = load_data("images", (3, 24, 24), [0.0] * 3, [1.0] * 3, data_dir=str(data))
    assert len(spec.train) + len(spec.val) == 8
    torch.manual_seed(0)
    model = get_model("style_transformer", width=4, blocks=1)
    task = StyleTask(model, 1e-3, PerceptualLoss(tiny_loss_net(), [picture("brick", (24, 24))]))
    meta = {"arch": "style_transformer", "arch_kwargs": {"width": 4, "blocks": 1},
            "recipe": "fast-style", "task": "style", "input_size": [3, 24, 24]}
    train(task, spec, TrainConfig(epochs=1, batch_size=2, progress=False), tmp_path, meta,
          log=lambda _line: None)
    reloaded = as_stylizer(vistool.load_model(tmp_path / "best.safetensors"))
    x = picture("coffee", (45, 70))
    torch.testing.assert_close(stylize(reloaded, x), stylize(model, x), rtol=0, atol=1e-6)


# --- the commands ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(images, tmp_path_factory):
    data, style = images
    out = tmp_path_factory.mktemp("fast-style-run") / "run"
    status = main(["train", "fast-style", "--style", style, "--data", str(data),
                   "--image-size", "24", "--epochs", "1", "--batch-size", "2",
                   "--no-pretrained", "--quiet", "--out", str(out)])
    assert status == 0
    return out / "best.safetensors"


def test_style_fast_writes_one_image_per_input_at_its_size_and_says_weights_are_random(
        checkpoint, images, tmp_path, capsys, monkeypatch):
    import vistool.core.devices

    first = write_picture(tmp_path / "one.png", "chelsea", (40, 56))
    second = write_picture(tmp_path / "two.png", "rocket", (33, 33))
    out = tmp_path / "out"
    waits = []  # each image's time starts and ends when the device is idle (CUDA is async)
    monkeypatch.setattr(vistool.core.devices, "synchronize", waits.append)
    assert main(["style", "--fast", str(checkpoint), first, second, "--out", str(out)]) == 0
    assert waits == [torch.device("cpu")] * 4
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert "trained against a random-weight VGG16" in captured.err
    assert "wrote 2 stylised image(s)" in captured.out and "random weights" in captured.out
    info = json.loads((out / "manifest.json").read_text())
    assert [o["png"] for o in info["outputs"]] == ["000-one.png", "001-two.png"]
    assert Image.open(out / "000-one.png").size == (56, 40)
    assert Image.open(out / "001-two.png").size == (33, 33)
    assert info["model"]["random_weights"] is True and len(info["timings"]["seconds"]) == 2
    assert main(["style", "--fast", str(checkpoint), first, "--size", "28",
                 "--out", str(tmp_path / "small")]) == 0
    assert Image.open(tmp_path / "small" / "000-one.png").size == (28, 20)


@pytest.mark.parametrize(("argv", "message"), [
    (["style", "--fast", "CLASSIFIER", "IMG"], "is a lenet-digits checkpoint, not a "
                                               "fast-style model"),
    (["style", "--fast", "missing.safetensors", "IMG"], "missing.safetensors"),
    (["style", "--fast", "STYLIZER", "missing.png"], "does not exist"),
    (["style", "IMG"], "give a CONTENT and at least one STYLE image"),
    (["train", "fast-style", "--data", "DATA"], "recipe fast-style needs --style IMG"),
    (["train", "lenet-digits", "--style", "IMG"], "recipe lenet-digits has none"),
    (["train", "fast-style", "--style", "IMG", "--data", "EMPTY"], "holds 0 image(s)"),
])
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, images, tmp_path, capsys, argv,
                                                  message):
    save_checkpoint(tmp_path / "lenet.safetensors", get_model("lenet"),
                    {"arch": "lenet", "arch_kwargs": {}, "recipe": "lenet-digits"})
    (tmp_path / "empty").mkdir()
    image = write_picture(tmp_path / "img.png", "coffee", (20, 20))
    names = {"CLASSIFIER": str(tmp_path / "lenet.safetensors"), "STYLIZER": str(checkpoint),
             "IMG": image, "DATA": str(images[0]), "EMPTY": str(tmp_path / "empty")}
    out = tmp_path / "out"
    status = main([names.get(a, a) for a in argv] + ["--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and message in err[-1] and err[-1].startswith("vistool: error:")
    assert not out.exists()
