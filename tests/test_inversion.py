"""Feature inversion (``vistool.invert``, ``vistool invert``) on the trained shapes CNN: the
reconstruction's activations match the image's, an early layer keeps more of the image
than a late one; the command's files and its bad input. Dataset examples: the top images
of each channel in one pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vistool
from vistool import VistoolError
from vistool.cli import main
from vistool.data.shapes import render_scene

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes(trained_shapes):
    loaded = vistool.load_model(str(trained_shapes[0]), device="cpu")
    rng = np.random.default_rng(0)
    scenes = [render_scene(rng, 64, [c]).image for c in (1, 3)]
    return loaded, torch.stack([loaded.transform(vistool.load_image(s)) for s in scenes]), scenes


def test_inversion_matches_the_activations_and_early_layers_keep_more(shapes):
    loaded, x, _ = shapes
    state = [p.requires_grad for p in loaded.model.parameters()]
    found = vistool.invert(loaded, x, ["features.2", "features.12"])
    for layer in ("features.2", "features.12"):
        assert found.images[layer].shape == x.shape and (found.errors[layer] < 0.10).all()
        assert found.history[layer].shape == (400, 2)
        assert found.history[layer][-1].mean() > found.history[layer][0].mean()
    assert (found.distances["features.2"] < found.distances["features.12"]).all()
    assert (found.distances["features.2"] < 0.05).all()  # the first block keeps the image
    torch.testing.assert_close(found.inputs, vistool.deprocess(x, loaded.mean, loaded.std))
    with torch.no_grad(), vistool.record(loaded.model, "features.12") as rec:
        mean = torch.tensor(loaded.mean).view(1, 3, 1, 1)
        std = torch.tensor(loaded.std).view(1, 3, 1, 1)
        loaded.model(torch.cat([x, (found.images["features.12"] - mean) / std]))
    act = rec["features.12"]
    expected = (act[2:] - act[:2]).flatten(1).norm(dim=1) / act[:2].flatten(1).norm(dim=1)
    torch.testing.assert_close(found.errors["features.12"], expected, rtol=1e-4, atol=1e-6)
    assert [p.requires_grad for p in loaded.model.parameters()] == state
    assert found._repr_png_().startswith(b"\x89PNG")


def test_invert_command_writes_strips_and_refuses_a_layer_without_space(shapes, trained_shapes,
                                                                       tmp_path, capsys):
    loaded, x, scenes = shapes
    for i, scene in enumerate(scenes):
        Image.fromarray(scene).save(tmp_path / f"s{i}.png")
    out = tmp_path / "out"
    argv = ["invert", "--model", str(trained_shapes[0]), "--steps", "40", "--seed", "3"]
    assert main([*argv, "--layer", "features.6", str(tmp_path / "s0.png"),
                 str(tmp_path / "s1.png"), "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    expected = vistool.invert(loaded, x, "features.6", steps=40, seed=3)
    for i, entry in enumerate(manifest["outputs"]):
        (layer,) = entry["layers"]
        assert layer["activation_error"] == pytest.approx(float(expected.errors["features.6"][i]),
                                                          abs=1e-5)
        assert Image.open(out / entry["png"]).size[0] > Image.open(out / layer["png"]).size[0]
        saved = np.asarray(Image.open(out / layer["png"]).resize((64, 64), Image.NEAREST))
        ours = (expected.images["features.6"][i].permute(1, 2, 0).numpy() * 255)
        assert np.abs(saved.astype(float) - ours).mean() < 2
    assert "features.6: activations within" in capsys.readouterr().out
    for bad, message in ((["--layer", "fc"], "layer 'fc' outputs (1, 5), not a spatial grid"),
                         (["--layer", "nope"], "no layer named 'nope'"),
                         (["--layer", "features.2", "--steps", "0"], "--steps")):
        try:
            status = main([*argv[:3], *bad, str(tmp_path / "s0.png"), "--out",
                           str(tmp_path / "bad")])
        except SystemExit as exc:  # argparse's own errors
            status = exc.code
        err = capsys.readouterr().err.strip().splitlines()
        assert status == 2 and message in err[-1] and not (tmp_path / "bad").exists()


# --- dataset examples ------------------------------------------------------------------------


def test_top_examples_are_the_brute_force_top_k_in_one_pass(shapes):
    from vistool.data.shapes import ShapesDataset
    from vistool.synthesize.examples import receptive_field, top_examples

    loaded = shapes[0]
    data = ShapesDataset(500, 64, seed=5)
    pictures = torch.from_numpy(data.images).permute(0, 3, 1, 2).float() / 255
    x = (pictures - torch.tensor(loaded.mean).view(1, 3, 1, 1)) / torch.tensor(
        loaded.std).view(1, 3, 1, 1)
    found = top_examples(loaded, x.split(64), "features.12", top=9)
    with torch.no_grad(), vistool.record(loaded.model, "features.12") as rec:
        loaded.model(x)
    act = rec["features.12"]
    peak, where = act.flatten(2).max(2)  # (N, C)
    brute = peak.T.topk(9, dim=1)
    same = [set(brute.indices[c].tolist()) == set(found.indices[c].tolist())
            for c in range(act.shape[1])]
    assert sum(same) / len(same) >= 0.9
    torch.testing.assert_close(found.values, brute.values)
    chosen = where.T.gather(1, found.indices)
    assert torch.equal(found.positions[..., 0] * 8 + found.positions[..., 1], chosen)
    torch.testing.assert_close(found.means, act.mean((0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert found.images == 500 and found.grid == (8, 8)
    again = top_examples(loaded, x.split(7), "features.12", top=9)  # any batching
    assert torch.equal(again.indices, found.indices)
    with pytest.raises(VistoolError, match="`top=0` must be at least 1"):
        top_examples(loaded, x.split(7), "features.12", top=0)
    # three 3x3 convolutions after three 2x2 poolings see 38 pixels; the first ReLU, 3
    assert receptive_field(loaded, "features.12", 64) == 38
    assert receptive_field(loaded, "features.2", 64) == 3
    assert found.patch_box(0, 0, (64, 64), 38)[2] - found.patch_box(0, 0, (64, 64), 38)[0] == 38


def test_filters_examples_command_writes_each_channels_examples(trained_shapes, tmp_path,
                                                                capsys):
    out = tmp_path / "out"
    argv = ["filters", "--model", str(trained_shapes[0]), "--layer", "features.12",
            "--channels", "0-1", "--size", "64", "--steps", "4", "--top", "4"]
    assert main([*argv, "--examples", "shapes:120", "--out", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    for entry in manifest["outputs"]:
        assert len(entry["examples"]) == 4 and entry["field"] == 38
        values = [e["activation"] for e in entry["examples"]]
        assert values == sorted(values, reverse=True)
        assert Image.open(out / entry["examples_png"]).size[0] > 4 * 96
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.png").write_bytes(b"not an image")
    for bad, message in ((["--examples", str(tmp_path / "junk")], "no images to find examples"),
                         (["--examples", str(tmp_path / "missing")], "does not exist"),
                         (["--examples", "shapes:8", "--top", "0"], "--top")):
        capsys.readouterr()
        try:
            status = main([*argv, *bad, "--out", str(tmp_path / "bad")])
        except SystemExit as exc:  # argparse's own errors
            status = exc.code
        assert status == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and message in errors[0] and not (tmp_path / "bad").exists()


def test_a_killed_examples_pass_resumes_to_the_same_result(trained_shapes, tmp_path, capsys,
                                                           monkeypatch):
    from vistool.data import sources

    argv = ["filters", "--model", str(trained_shapes[0]), "--layer", "features.12",
            "--channels", "0-3", "--size", "64", "--steps", "2", "--top", "5",
            "--examples", "shapes:150"]
    assert main([*argv, "--out", str(tmp_path / "clean")]) == 0
    read = sources.ImageStream.__getitem__

    def dies_at_70(self, position):
        if self.sources[position].key == "shapes/000070":
            raise KeyboardInterrupt  # the run is killed after two batches of 32
        return read(self, position)

    monkeypatch.setattr(sources.ImageStream, "__getitem__", dies_at_70)
    assert main([*argv, "--out", str(tmp_path / "run")]) == 130  # "vistool: interrupted"
    resume = tmp_path / ".run.examples.pt"
    assert not (tmp_path / "run").exists() and torch.load(resume)["done"] == 64
    monkeypatch.undo()
    seen = []
    monkeypatch.setattr(sources.ImageStream, "__getitem__",
                        lambda self, p: seen.append(self.sources[p].key) or read(self, p))
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert "shapes/000000" not in seen[:86] and len(seen) >= 86  # the pass went on at 64
    clean, resumed = (json.loads((tmp_path / name / "manifest.json").read_text())["outputs"]
                      for name in ("clean", "run"))
    assert [e["examples"] for e in resumed] == [e["examples"] for e in clean]
    assert [e["mean_activation"] for e in resumed] == pytest.approx(
        [e["mean_activation"] for e in clean], abs=1e-5)
    assert not resume.exists()
    capsys.readouterr()


MEMORY_SCRIPT = """
import resource, sys
import numpy as np, torch, vistool
from vistool.data.shapes import render_scene
from vistool.synthesize.examples import top_examples
torch.set_num_threads(1)
loaded = vistool.load_model(sys.argv[1], device="cpu")
count = int(sys.argv[2])
top_examples(loaded, [torch.zeros(50, 3, 64, 64)], "features.12")  # allocators warmed up
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
def batches():  # generated as they go: nothing but the pass itself grows with the count
    rng = np.random.default_rng(0)
    for first in range(0, count, 50):
        yield torch.stack([loaded.transform(vistool.load_image(render_scene(
            rng, 64, [int(rng.integers(5))]).image)) for _ in range(min(50, count - first))])
found = top_examples(loaded, batches(), "features.12")
print(found.images, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_the_examples_pass_takes_no_more_memory_for_ten_times_the_images(trained_shapes):
    import subprocess
    import sys

    growth = {}  # the peak resident memory's growth during the pass, in KiB
    for count in (500, 5000):
        done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(trained_shapes[0]),
                               str(count)], capture_output=True, text=True, check=True)
        images, growth[count] = (int(v) for v in done.stdout.split())
        assert images == count
    # (the activations of 5,000 images alone would be 80 MiB; the growth itself varies by
    # 10 MiB from run to run, 16 MiB of slack)
    assert growth[5000] <= 1.1 * growth[500] + 16384, growth
