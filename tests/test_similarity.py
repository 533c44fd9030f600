"""Similarity: :class:`vistool.SimilarityTarget` explains the cosine similarity of an
image's embedding to a reference's. Grad-CAM of it equals a hand computation on a tiny
model and pytorch-grad-cam's with the ``SimilarityToConceptTarget`` of its embeddings
tutorial on resnet18 (the model wrapped to return its embedding, as there); ``vistool gradcam
--similar-to`` writes the maps and the similarities."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torchvision
from conftest import require_peer
from torch import nn

import vistool
from vistool import SimilarityTarget, TargetError
from vistool.cli import main


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.relu(self.conv(x)).mean((2, 3)))


def test_gradcam_of_a_similarity_equals_the_hand_computation():
    model = Tiny().eval()
    ref = torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(2))
    target = SimilarityTarget.of_images(model, ref)
    with torch.no_grad():
        expected_ref = model.relu(model.conv(ref)).mean((2, 3))[0]
    torch.testing.assert_close(target.reference, expected_ref)
    ours = vistool.explain(model, x, "gradcam", targets=target, layer="relu")
    act = model.relu(model.conv(x))  # by hand: cos(GAP(A), r), its gradient to A
    cos = (act.mean((2, 3)) @ expected_ref) / (act.mean((2, 3)).norm(dim=1)
                                               * expected_ref.norm())
    (grad,) = torch.autograd.grad(cos.sum(), act)
    cam = (grad.mean((2, 3), keepdim=True) * act).sum(1).clamp_min(0)
    torch.testing.assert_close(ours.scores, cos.detach())
    torch.testing.assert_close(ours.raw["relu"], cam.detach())
    assert cam.amax() > 0
    at_layer = vistool.explain(model, x, "gradcam", targets=SimilarityTarget(
        expected_ref, layer="relu"), layer="relu")  # the layer's output, averaged: the same
    torch.testing.assert_close(at_layer.raw["relu"], cam.detach())


@pytest.mark.parametrize(("make", "message"), [
    (lambda m: SimilarityTarget(torch.ones(3))(None), "give it to explain"),
    (lambda m: vistool.explain(m, torch.zeros(1, 3, 6, 6), "gradcam", layer="relu",
                               targets=SimilarityTarget(torch.ones(3))), "the reference 3"),
    (lambda m: vistool.explain(nn.Sequential(nn.Conv2d(3, 2, 1)), torch.zeros(1, 3, 6, 6),
                               "gradcam", layer="0", targets=SimilarityTarget(torch.ones(2))),
     "no linear layer"),
    (lambda m: vistool.explain(m, torch.zeros(1, 3, 6, 6), "scorecam", layer="relu",
                               targets=SimilarityTarget(torch.ones(4))), "needs class indices"),
])
def test_bad_similarity_requests_are_one_line(make, message):
    with pytest.raises(TargetError, match=message):
        make(Tiny().eval())


def test_similarity_gradcam_equals_pytorch_grad_cam():
    gc = require_peer("pytorch_grad_cam")
    from pytorch_grad_cam.utils.image import scale_cam_image

    class SimilarityToConceptTarget:  # defined in pytorch-grad-cam's embeddings tutorial
        def __init__(self, features):  # (not in its package), as there
            self.features = features

        def __call__(self, model_output):
            return torch.nn.CosineSimilarity(dim=0)(model_output, self.features)

    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    ref = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    target = SimilarityTarget.of_images(model, ref)
    ours = vistool.explain(model, x, "gradcam", targets=target, layer="layer3")
    raw = ours.raw["layer3"]
    assert (raw.flatten(1).amax(1) > raw.flatten(1).amin(1)).all()

    class Embedding(nn.Module):  # the tutorial's: the network without its classifier
        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return torch.flatten(nn.Sequential(*list(self.model.children())[:-1])(images), 1)

    with gc.GradCAM(Embedding(model), [model.layer3]) as cam, torch.enable_grad():
        theirs = cam(x, [SimilarityToConceptTarget(target.reference)] * 2)
    expected = scale_cam_image(scale_cam_image(raw.numpy(), (64, 64)))
    np.testing.assert_allclose(expected, theirs, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("similar")
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).resize((64, 64)).save(
            folder / f"{name}.png")
    (folder / "concepts").mkdir()
    for name in ("b", "c"):
        (folder / "concepts" / f"{name}.png").write_bytes((folder / f"{name}.png").read_bytes())
    return folder


GRADCAM = ["gradcam", "--model", "resnet18", "--weights", "none", "--input-size", "64",
           "--device", "cpu"]


@pytest.mark.parametrize("reference", ["b.png", "concepts"])
def test_gradcam_cli_similar_to_an_image_or_a_folder_of_concepts(pictures, tmp_path, reference):
    out = tmp_path / "out"
    assert main([*GRADCAM, str(pictures / "a.png"), "--similar-to", str(pictures / reference),
                 "--layer", "layer3", "--out", str(out)]) == 0
    (entry,) = json.loads((out / "manifest.json").read_text())["images"][0]["explanations"]
    loaded = vistool.load_model("resnet18", weights="none", device="cpu", input_size=64, seed=0)
    refs = loaded.preprocess(sorted((pictures / reference).glob("*.png"))
                             if reference == "concepts" else [pictures / reference])
    target = SimilarityTarget.of_images(loaded.model, refs)
    result = vistool.explain(loaded, loaded.preprocess([pictures / "a.png"]), "gradcam",
                             targets=target, layer="layer3")
    assert entry["similarity"] == pytest.approx(float(result.scores[0]), abs=1e-6)
    assert len(entry["reference"]) == (2 if reference == "concepts" else 1)
    np.testing.assert_allclose(np.load(out / entry["raw"][0]), result.raw["layer3"][0].numpy(),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(("argv", "message"), [
    (["--similar-to", "missing.png"], "does not exist"),
    (["--similar-to", "a.png", "--target", "3"], "drop --target"),
    (["--embedding", "layer4"], "give --similar-to too"),
    (["--similar-to", "a.png", "--embedding", "layer9"], "layer9"),
])
def test_bad_similar_to_requests_exit_2_in_one_line(pictures, tmp_path, capsys, argv, message):
    argv = [str(pictures / a) if a.endswith(".png") else a for a in argv]
    out = tmp_path / "out"
    assert main([*GRADCAM, str(pictures / "a.png"), *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()


def test_similar_to_over_a_folder_is_refused_for_now(pictures, tmp_path, capsys):
    assert main([*GRADCAM, str(pictures / "concepts"), "--similar-to", str(pictures / "a.png"),
                 "--out", str(tmp_path / "o")]) == 2
    assert "--similar-to is not yet supported for folders" in capsys.readouterr().err
