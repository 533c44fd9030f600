"""The CAM method registry and what every method shares: one specification per method, a
third-party method through the ``vistool.cams`` entry points, the method options,
``fuse``, ``aug_smooth`` and ``eigen_smooth``, by hand and through the command line
(pytorch-grad-cam agreement: tests/test_cam_peers.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import save_tiny_shapes_checkpoint
from PIL import Image
from torch import nn

from vistool import VistoolError
from vistool.cli import main
from vistool.core.errors import RandomWeightsWarning
from vistool.drawing import normalize
from vistool.explainers.cam import AUGMENTATIONS, explain
from vistool.explainers.cams import methods
from vistool.explainers.names import CAM_METHODS, builtin_cam_modules


def test_every_module_is_one_method_named_after_it():
    found = methods()
    assert tuple(found) == CAM_METHODS
    for name, module in builtin_cam_modules().items():
        assert found[name].name == name, module
        assert found[name].summary and found[name].reference


class Smooth(nn.Module):
    """conv -> tanh -> conv -> GAP -> linear: a smooth path (ShapleyCAM's Hessian term)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.act = nn.Tanh()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(self.conv2(self.act(self.conv(x))).mean((2, 3)))


@pytest.fixture
def x():
    return torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def test_shapleycam_is_gradient_minus_half_the_hessian_term(x):
    net = Smooth()
    targets = torch.tensor([1, 2])
    ours = explain(net, x, "shapleycam", targets=targets, layer="conv")
    a = net.conv(x).detach().requires_grad_(True)
    score = net.fc(net.conv2(net.act(a)).mean((2, 3)))[torch.arange(2), targets].sum()
    (grad,) = torch.autograd.grad(score, a, create_graph=True)
    (hvp,) = torch.autograd.grad(grad, a, grad_outputs=a.detach())
    weights = (grad - 0.5 * hvp).detach().mean((2, 3))
    expected = torch.einsum("nc,nchw->nhw", weights, a.detach()).clamp_min(0)
    torch.testing.assert_close(ours.raw["conv"], expected, rtol=1e-5, atol=1e-6)
    gradcam = explain(net, x, "gradcam", targets=targets, layer="conv")
    difference = (ours.raw["conv"] - gradcam.raw["conv"]).abs().max()
    assert difference > 0.1 * gradcam.raw["conv"].max()  # the tanh's curvature
    # after the tanh the path is linear (conv2 -> GAP -> linear): no Hessian term, Grad-CAM
    linear = explain(net, x, "shapleycam", targets=targets, layer="act")
    torch.testing.assert_close(linear.raw["act"], explain(net, x, "gradcam", targets=targets,
                                                          layer="act").raw["act"])


def test_finercam_explains_the_target_against_its_nearest_classes(x):
    net = Smooth()
    ours = explain(net, x, "finercam", targets=0, layer="conv2", options={"comparisons": 2,
                                                                          "alpha": 0.5})
    a = net.conv2(net.act(net.conv(x))).detach().requires_grad_(True)
    logits = net.fc(a.mean((2, 3)))
    scores = []
    for row in range(2):
        y = logits[row]
        nearest = [int(c) for c in (y - y[0]).abs().detach().argsort()[1:3]]
        p = y.softmax(0)[nearest]
        scores.append((p * (y[0] - 0.5 * y[nearest])).sum() / (p.sum() + 1e-9))
    (grad,) = torch.autograd.grad(torch.stack(scores).sum(), a)
    expected = torch.einsum("nc,nchw->nhw", grad.mean((2, 3)), a.detach()).clamp_min(0)
    assert ours.closed_form  # conv2 -> GAP -> linear: the score's gradient in closed form
    torch.testing.assert_close(ours.raw["conv2"], expected, rtol=1e-5, atol=1e-7)
    assert ours.targets.tolist() == [0, 0]


def test_fem_weights_channels_by_their_k_sigma_peaks():
    act = torch.zeros(1, 2, 4, 4)
    act[0, 0, 0, 0] = 8.0  # one peak: above mean + 2 std
    act[0, 1] = torch.arange(16.0).reshape(4, 4)  # a ramp: nothing above mean + 2 std
    net = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(32, 2))
    ours = explain(net, act, "fem", targets=0, layer="0")
    expected = act[0, 0] / 16  # weight 1/16 for channel 0, 0 for channel 1
    torch.testing.assert_close(ours.raw["0"][0], expected)
    lower = explain(net, act, "fem", targets=0, layer="0", options={"k": 1})
    assert lower.raw["0"][0, 3, 3] > 0  # k = 1: the ramp's top values count too


def test_kpcacam_equals_scikit_learns_kernel_pca():
    from sklearn.decomposition import KernelPCA

    from vistool.explainers.cams.kpcacam import kernel_projection

    act = torch.randn(2, 5, 6, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for kernel in ("sigmoid", "rbf", "poly", "cosine", "linear"):
        ours = kernel_projection(act, kernel)
        for i in range(2):
            flat = act[i].reshape(5, -1).T.numpy()
            theirs = KernelPCA(n_components=1, kernel=kernel, eigen_solver="dense").fit_transform(
                flat - flat.mean(0))
            np.testing.assert_allclose(ours[i].reshape(-1).numpy(), theirs[:, 0], atol=1e-10,
                                       err_msg=kernel)


def test_aug_smooth_is_the_mean_over_the_augmentations(x):
    net = Smooth()
    ours = explain(net, x, "gradcam", layer="act", aug_smooth=True)
    plain = explain(net, x, "gradcam", layer="act")
    maps, raws = [], []
    for flip, factor in AUGMENTATIONS:
        inputs = (x * factor).flip(-1) if flip else x * factor
        one = explain(net, inputs, "gradcam", layer="act", targets=plain.targets)
        maps.append(one.maps.flip(-1) if flip else one.maps)
        raws.append(one.raw["act"].flip(-1) if flip else one.raw["act"])
    assert len(maps) == 6
    torch.testing.assert_close(ours.maps, torch.stack(maps).mean(0))
    torch.testing.assert_close(ours.raw["act"], torch.stack(raws).mean(0))
    assert torch.equal(ours.targets, plain.targets) and torch.equal(ours.probs, plain.probs)
    assert not torch.allclose(ours.maps, plain.maps)
    top = explain(net, x, "gradcam", layer="act", aug_smooth=True, topk=2)
    assert top.maps.shape == (2, 2, 12, 12) and torch.equal(top.maps[:, 0], ours.maps)


def test_eigen_smooth_is_the_principal_component_of_the_weighted_activations(x):
    net = Smooth()
    ours = explain(net, x, "gradcam", layer="act", targets=1, eigen_smooth=True)
    act = net.act(net.conv(x)).detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(net.fc(net.conv2(act).mean((2, 3)))[:, 1].sum(), act)
    weighted = (grad.mean((2, 3))[..., None, None] * act).detach()
    expected = []
    for i in range(2):
        flat = weighted[i].flatten(1).T  # (positions, channels)
        centred = flat - flat.mean(0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        proj = centred @ vh[0]
        proj = proj if (proj * flat.sum(1)).sum() >= 0 else -proj  # agrees with the sum
        expected.append(proj.reshape(12, 12).clamp_min(0))
    torch.testing.assert_close(ours.raw["act"], torch.stack(expected), rtol=1e-4, atol=1e-6)
    plain = explain(net, x, "gradcam", layer="act", targets=1)
    assert not torch.allclose(ours.raw["act"], plain.raw["act"])


def test_product_fusion_multiplies_the_normalised_maps(x):
    net = Smooth()
    fused = explain(net, x, "gradcam++", layer=["conv", "act"], fuse="product", targets=1)
    refine = explain(net, x, "refinecam", layer=["conv", "act"], targets=1)
    parts = [explain(net, x, "gradcam++", layer=n, targets=1).maps for n in ("conv", "act")]
    torch.testing.assert_close(fused.maps, normalize(parts[0] * parts[1]))
    torch.testing.assert_close(refine.maps, fused.maps)


def test_sum_fusion_adds_the_raw_maps_and_takes_targets_made_in_inference_mode(x):
    net = Smooth()
    with torch.inference_mode():
        targets = net(x).argmin(1)
    fused = explain(net, x, "gradcam", layer=["conv", "act"], fuse="sum", targets=targets)
    up = [torch.nn.functional.interpolate(fused.raw[n][:, None], size=(12, 12),
                                          mode="bilinear")[:, 0] for n in ("conv", "act")]
    torch.testing.assert_close(fused.maps, normalize(up[0] + up[1]))
    assert torch.equal(fused.targets, targets) and fused.raw["conv"].abs().sum() > 0


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"method": "legrad"}, "legrad explains transformer blocks with a self_attention "
                           "(nn.MultiheadAttention, as torchvision's VisionTransformer has); "
                           "layer 'act' is in none"),
    ({"method": "eigencam", "eigen_smooth": True}, "`eigen_smooth` does not apply to eigencam"),
    ({"method": "gradcam", "fuse": "mean"}, "`fuse='mean'` combines several layers"),
    ({"method": "gradcam", "closed_form": True}, "layer 'act' is not followed by global "
     "average pooling and a linear classifier alone, so gradcam's closed form does not "
     "apply; leave `closed_form` unset"),
    ({"method": "gradcam", "fuse": "max", "layer": ["conv", "act"]}, "is not a fusion"),
    ({"method": "fem", "options": {"q": 1}}, "fem has no option 'q' in `options` (its options: k)"),
    ({"method": "fem", "options": {"k": "x"}}, "fem's option k must be a float, not 'x'"),
    ({"method": "kpcacam", "options": {"kernel": "tri"}}, "must be one of sigmoid, rbf"),
    ({"method": "gradcam", "options": {"k": 1}}, "gradcam has no option 'k' in `options` "
                                                 "(its options: none)"),
    ({"method": "sess", "options": {"base": "sess"}}, "sess's option base must be another CAM "
                                                      "method, not 'sess'"),
    ({"method": "sess", "options": {"pool": "min"}}, "sess's option pool must be one of mean, max"),
])
def test_bad_requests_name_the_parameter(x, kwargs, message):
    with pytest.raises(VistoolError) as error:
        explain(Smooth(), x, **{"layer": "act", **kwargs})
    assert message in str(error.value)


@pytest.fixture
def checkpoint(tmp_path):
    path = save_tiny_shapes_checkpoint(tmp_path / "net.safetensors")
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(tmp_path / "img.png")
    return path


def test_a_method_from_an_entry_point_appears_everywhere(tmp_path, checkpoint):
    """A toy method installed the way a third-party package installs it (a dist-info folder
    on the path with its entry point) is in the names, ``explain``, ``evaluate``'s methods,
    the dashboard's list, ``vistool methods`` and ``vistool gradcam --method``."""
    (tmp_path / "toycam.py").write_text(textwrap.dedent('''
        from vistool.explainers.cams import CamMethod, per_layer

        def channel_mean(ctx, name):
            act = ctx.grid(name)
            return act.mean(1, keepdim=True).clamp_min(0).expand(-1, ctx.scores.shape[1], -1, -1)

        METHOD = CamMethod("toycam", per_layer(channel_mean), "the channel mean",
                           reference="itself")
    '''))
    info = tmp_path / "toycam-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toycam\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[vistool.cams]\ntoycam = toycam:METHOD\n")
    script = textwrap.dedent(f'''
        import json, sys, torch
        from vistool.explainers.names import CAM_METHODS
        from vistool.evaluate.names import EVAL_METHODS
        import vistool
        from vistool.cli import main
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(),
                                  torch.nn.Linear(2 * 16, 2))
        x = torch.randn(1, 3, 4, 4)
        result = vistool.explain(net, x, "toycam", layer="0")
        expected = net[0](x).mean(1).clamp_min(0).detach()
        assert torch.allclose(result.raw["0"], expected), (result.raw, expected)
        assert "toycam" in CAM_METHODS and "toycam" in EVAL_METHODS
        assert "toycam" in vistool.CAM_METHODS
        assert main(["methods", "--json"]) == 0
        assert main(["gradcam", "--model", r"{checkpoint}", "--method",
                     "toycam", "--out", r"{tmp_path / 'out'}", r"{tmp_path / 'img.png'}"]) == 0
    ''')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path),
                                                          os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout[:proc.stdout.rindex("]") + 1])
    assert {"name": "toycam", "summary": "the channel mean", "needs": [],
            "closed_form": False, "forwards": "none", "eigen_smooth": False, "fuse": "mean",
            "options": {}, "reference": "itself"} in rows
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["method"] == "toycam"


def _cli(capsys, *argv):
    status = main([str(a) for a in argv])
    return status, capsys.readouterr()


@pytest.mark.parametrize(("extra", "fragment"), [
    (["--method", "eigencam", "--eigen-smooth"], "--eigen-smooth does not apply to eigencam"),
    (["--fuse", "product"], "--fuse product combines several layers; give two or more in "
                            "--layer"),
    (["--method", "fem", "--option", "q=1"], "fem has no option 'q' in --option"),
    (["--method", "fem", "--option", "k=x"], "fem's option k must be a float"),
    (["--method", "dff", "--option", "concepts=999"], "dff's option concepts (999) must be at "
                                                       "most the layer's 16 channels"),
])
def test_cli_bad_method_requests_are_one_line_and_write_nothing(capsys, tmp_path, checkpoint,
                                                               extra, fragment):
    out = tmp_path / "out"
    status, (_, err) = _cli(capsys, "gradcam", "--model", checkpoint, "--out", out,
                            tmp_path / "img.png", *extra)
    assert status == 2 and err.count("\n") == 1 and fragment in err, err
    assert not out.exists()


TINY_VIT = """
import torch
from torchvision.models import VisionTransformer


def build():
    torch.manual_seed(0)
    model = VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                              num_classes=4)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zeroes it
    return model
"""


def test_legrad_explains_a_vision_transformer_from_the_cli_and_in_evaluate(capsys, tmp_path,
                                                                            checkpoint):
    (tmp_path / "tinyvit.py").write_text(TINY_VIT)
    blocks = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    model = [f"{tmp_path / 'tinyvit.py'}:build", "--input-size", "3,32,32"]
    out = tmp_path / "out"
    status, _ = _cli(capsys, "gradcam", "--model", *model, "--method", "legrad", "--option",
                     "pool=token", "--layer", blocks[0], "--layer", blocks[1], "--out", out,
                     tmp_path / "img.png")
    assert status == 0
    raw = [np.load(next(out.glob(f"*_raw_{b}.npy"))) for b in blocks]
    import vistool

    with pytest.warns(RandomWeightsWarning):  # said, as on the command line
        loaded = vistool.load_model(f"{tmp_path / 'tinyvit.py'}:build", input_size="3,32,32",
                                    device="cpu")
    image = loaded.transform(vistool.load_image(tmp_path / "img.png"))[None]
    expected = explain(loaded, image, "legrad", layer=blocks, options={"pool": "token"})
    for ours, block in zip(raw, blocks):
        assert ours.shape == (4, 4) and ours.max() > 0
        np.testing.assert_allclose(ours, expected.raw[block][0].numpy(), rtol=1e-5, atol=1e-7)
    from vistool.evaluate.suite import evaluate

    masks = torch.zeros(1, 32, 32, dtype=torch.bool)
    masks[:, 8:24, 8:24] = True
    scored = evaluate(loaded, image, None, methods=["legrad"], masks=masks, layer=blocks[1],
                      metrics=["relevance_mass", "deletion_auc"])
    torch.testing.assert_close(scored.maps["legrad"], explain(loaded, image, "legrad",
                                                              layer=blocks[1]).maps)
    assert 0 <= scored.values["legrad"]["relevance_mass"][0] <= 1
    status, (_, err) = _cli(capsys, "gradcam", "--model", checkpoint, "--method", "legrad",
                            "--out", tmp_path / "bad", tmp_path / "img.png")
    assert status == 2 and err.count("\n") == 1 and "legrad explains transformer blocks" in err
    assert not (tmp_path / "bad").exists()


def test_cli_passes_the_method_options_and_smoothing(capsys, tmp_path, checkpoint):
    out = tmp_path / "out"
    status, _ = _cli(capsys, "gradcam", "--model", checkpoint, "--out", out, "--method", "fem",
                     "--option", "k=1", "--aug-smooth", "--eigen-smooth", tmp_path / "img.png")
    assert status == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["options"]["options"] == {"k": "1"}
    assert manifest["options"]["aug_smooth"] and manifest["options"]["eigen_smooth"]
    raw = np.load(next(out.glob("*.npy")))
    from vistool import load_image, load_model

    loaded = load_model(str(checkpoint), device="cpu")
    x = loaded.transform(load_image(tmp_path / "img.png"))[None]
    expected = explain(loaded, x, "fem", options={"k": 1}, aug_smooth=True, eigen_smooth=True)
    np.testing.assert_allclose(raw, expected.raw[loaded.default_layer][0].numpy(), rtol=1e-5,
                               atol=1e-7)


def test_dff_command_draws_one_colour_per_concept(capsys, tmp_path, checkpoint):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), np.uint8)).save(
        tmp_path / "noise.png")
    out = tmp_path / "out"
    status, (printed, _) = _cli(capsys, "dff", "--model", checkpoint, "--concepts", "3",
                                "--out", out, tmp_path / "img.png", tmp_path / "noise.png")
    assert status == 0
    manifest = json.loads((out / "manifest.json").read_text())
    concepts = manifest["concept_classes"]
    assert [c["concept"] for c in concepts] == [0, 1, 2]
    assert len({c["color"] for c in concepts}) == 3
    assert all(len(c["top"]) == 3 and c["top"][0]["prob"] >= c["top"][1]["prob"]
               for c in concepts)
    assert sum(line.startswith("concept ") for line in printed.splitlines()) == 3
    from vistool import factorize, load_image, load_model

    loaded = load_model(str(checkpoint), device="cpu")
    x = torch.stack([loaded.transform(load_image(tmp_path / n)) for n in ("img.png", "noise.png")])
    expected = factorize(loaded, x, concepts=3)
    for i, entry in enumerate(manifest["outputs"]):
        np.testing.assert_allclose(np.load(out / entry["npy"]), expected.raw[i].numpy(),
                                   rtol=1e-5, atol=1e-6)
        picture = np.asarray(Image.open(out / entry["png"]))
        assert picture.shape == (224, 224, 3)
    status, (_, err) = _cli(capsys, "dff", "--model", checkpoint, "--concepts", "99",
                            "--out", tmp_path / "bad", tmp_path / "img.png")
    assert status == 2 and err.count("\n") == 1 and "--concepts 99 must be between 1 and" in err
    assert not (tmp_path / "bad").exists()
