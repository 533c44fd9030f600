"""Generative models: reconstructions, codes, interpolation, traversal, prior samples,
discriminator scores and Grad-CAM, ``vistool generate`` and ``gradcam --part``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vistool
from trainers.data import load_data
from trainers.models import get_model
from trainers.recipes import run_recipe
from vistool import generative as gen
from vistool.cli import main
from vistool.core.checkpoint import save_checkpoint

RECIPES = {"autoencoder": "autoencoder-mnist", "conv_autoencoder": "conv-autoencoder-mnist",
           "vae": "vae-mnist", "gan": "gan-mnist", "dcgan": "dcgan-mnist"}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Each generative recipe trained for a few steps on digits: {arch: run folder}."""
    root = tmp_path_factory.mktemp("generative")
    for arch, recipe in RECIPES.items():
        run_recipe(recipe, root / arch, dataset="digits", epochs=1, batch_size=256,
                   device="cpu", progress=False, log=lambda _line: None)
    return {arch: root / arch for arch in RECIPES}


@pytest.fixture(scope="module")
def digits():
    data = load_data("digits", (1, 28, 28), [0.0], [1.0], seed=0).val
    return torch.stack([data[i][0] for i in range(8)])


def loaded(runs, arch):
    return vistool.load_model(runs[arch] / "best.safetensors", device="cpu")


@pytest.mark.parametrize("arch", list(RECIPES))
def test_every_kind_gives_outputs_of_the_right_shapes(runs, digits, arch):
    model = loaded(runs, arch).model
    kind = gen.model_kind(model)
    assert kind == {"autoencoder": "autoencoder", "conv_autoencoder": "autoencoder"}.get(
        arch, "vae" if arch == "vae" else "gan")
    if kind == "gan":
        codes, images = gen.sample(model, 6, seed=1)
        assert codes.shape == (6, 64) and images.shape == (6, 1, 28, 28)
        assert gen.discriminator_scores(model, images).shape == (6,)
        a, b = codes[:1], codes[1:2]
    else:
        assert gen.reconstruct(model, digits).shape == digits.shape
        a, b = gen.encode(model, digits[:1]), gen.encode(model, digits[1:2])
    assert gen.interpolate(model, a, b, 5).shape == (5, 1, 28, 28)
    codes, frames = gen.traverse(model, a, 0, [-1.0, 0.0, 1.0])
    assert frames.shape == (3, 1, 28, 28) and codes.shape == (3, a[0].numel())
    assert model.training is False  # loaded in eval mode, and left so


def test_interpolation_ends_are_the_reconstructions(runs, digits):
    for arch in ("autoencoder", "conv_autoencoder", "vae"):
        model = loaded(runs, arch).model
        a, b = gen.encode(model, digits[:1]), gen.encode(model, digits[1:2])
        frames = gen.interpolate(model, a, b, 4)
        torch.testing.assert_close(frames[0], gen.reconstruct(model, digits[:1])[0],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(frames[-1], gen.reconstruct(model, digits[1:2])[0],
                                   rtol=1e-5, atol=1e-5)


def test_spherical_interpolation_keeps_the_norm_and_linear_does_not():
    a = torch.tensor([[3.0, 0.0, 4.0]])
    b = torch.tensor([[0.0, 5.0, 0.0]])
    t = torch.linspace(0, 1, 7)
    on_sphere = gen.slerp(a, b, t)
    torch.testing.assert_close(on_sphere.norm(dim=1), torch.full((7,), 5.0))
    torch.testing.assert_close(on_sphere[[0, -1]], torch.cat([a, b]))
    linear_middle = (a + b) / 2
    assert float(linear_middle.norm()) < 5.0 - 1


def test_traversal_changes_only_the_chosen_dimension(runs, digits):
    model = loaded(runs, "vae").model
    code = gen.encode(model, digits[:1])
    codes, frames = gen.traverse(model, code, 3, [-2.0, 0.5, 2.0])
    others = torch.cat([codes[:, :3], codes[:, 4:]], 1)
    torch.testing.assert_close(others, torch.cat([code[:, :3], code[:, 4:]], 1).expand(3, -1))
    assert codes[:, 3].tolist() == [-2.0, 0.5, 2.0]
    torch.testing.assert_close(frames, gen.decode(model, codes))
    with pytest.raises(vistool.VistoolError, match="dimension 20 is out of range"):
        gen.traverse(model, code, 20, [0.0])


def test_the_seed_fixes_the_sample_grid(runs):
    model = loaded(runs, "dcgan").model
    first, second, other = (gen.sample(model, 8, seed)[1] for seed in (3, 3, 4))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert (first - other).abs().max() > 1e-3


def test_discriminator_gradcam_is_explain_with_a_target_callable(runs):
    model = loaded(runs, "dcgan").model
    _, fakes = gen.sample(model, 4, seed=0)
    direct = vistool.explain(model.discriminator, fakes, "gradcam", targets=gen.fakeness,
                             layer="3")
    assert direct.maps.shape == (4, 28, 28) and direct.targets is None
    as_classes = vistool.explain(gen.RealFake(model.discriminator), fakes, "gradcam",
                                 targets=1, layer="discriminator.3")
    torch.testing.assert_close(direct.maps, as_classes.maps)


def test_generate_command_writes_every_view(runs, tmp_path):
    out = tmp_path / "vae"
    assert main(["generate", "--model", str(runs["vae"] / "best.safetensors"), "--samples",
                 "16", "--interpolate", "2", "--steps", "5", "--traverse", "2",
                 "--range", "-2,2",  # typed as users type it: a negative value after a flag
                 "--latent-scatter", "--series", str(runs["vae"]), "--out", str(out)]) == 0
    info = json.loads((out / "manifest.json").read_text())
    assert [o["png"] for o in info["outputs"]] == [
        "samples.png", "reconstructions.png", "interpolation.png", "traversal.png",
        "latent-scatter.png", "series.png"]
    assert info["model_kind"] == "vae" and np.load(out / "samples-codes.npy").shape == (16, 20)
    assert Image.open(out / "interpolation.png").size == (5 * 30 + 2, 2 * 30 + 2)
    traversed = np.load(out / "traversal-codes.npy")[:, 2]
    assert traversed.tolist() == pytest.approx([-2.0, -1.0, 0.0, 1.0, 2.0])
    out = tmp_path / "gan"
    assert main(["generate", "--model", str(runs["dcgan"] / "best.safetensors"), "--samples",
                 "9", "--out", str(out)]) == 0
    info = json.loads((out / "manifest.json").read_text())
    assert [o["png"] for o in info["outputs"]] == ["samples.png"]
    assert isinstance(info["discriminator_on_samples"], float)


@pytest.mark.parametrize(("argv", "message"), [
    (["generate", "--model", "LENET"], "the model is a LeNet, not an autoencoder, VAE or GAN"),
    (["generate", "--model", "GAN", "--latent-scatter"], "encoding needs autoencoder or vae; "
                                                         "the model is a gan"),
    (["generate", "--model", "VAE", "--traverse", "99"], "dimension 99 is out of range"),
    (["gradcam", "--model", "VAE", "--part", "discriminator", "IMG"],
     "--part discriminator needs a GAN"),
])
def test_wrong_model_kinds_are_one_line(runs, tmp_path, capsys, argv, message):
    save_checkpoint(tmp_path / "lenet.safetensors", get_model("lenet"),
                    {"arch": "lenet", "arch_kwargs": {}})
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "img.png")
    names = {"LENET": str(tmp_path / "lenet.safetensors"), "IMG": str(tmp_path / "img.png"),
             "GAN": str(runs["gan"] / "best.safetensors"),
             "VAE": str(runs["vae"] / "best.safetensors")}
    out = tmp_path / "out"
    assert main([names.get(a, a) for a in argv] + ["--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and not out.exists()


def test_gradcam_part_discriminator_explains_fakeness(runs, tmp_path):
    model = loaded(runs, "dcgan").model
    _, fakes = gen.sample(model, 1, seed=0)
    Image.fromarray((fakes[0, 0].numpy() * 255).astype(np.uint8)).save(tmp_path / "fake.png")
    out = tmp_path / "out"
    assert main(["gradcam", "--model", str(runs["dcgan"] / "best.safetensors"), "--part",
                 "discriminator", "--target", "fake", "--out", str(out),
                 str(tmp_path / "fake.png")]) == 0
    info = json.loads((out / "manifest.json").read_text())
    assert info["outputs"][0]["name"] == "fake"
    assert info["model"]["spec"].endswith("(discriminator)")
