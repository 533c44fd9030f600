"""``vistool evaluate`` on the shapes CNN trained in the test session: the table, the JSON,
the files of the run, image folders with masks, and one-line errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from vistool.cli import main
from vistool.data.shapes import SHAPE_CLASSES, render_scene

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(capsys, *argv):
    try:
        status = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    out, err = capsys.readouterr()
    return status, out, err


def test_evaluate_json_table_and_files(trained_shapes, tmp_path, capsys):
    out = tmp_path / "run"
    status, printed, err = _run(
        capsys, "evaluate", "--model", trained_shapes[0], "--limit", 12, "--methods",
        "gradcam,random", "--metrics", "pointing_game,deletion_auc,sparseness", "--steps", 8,
        "--sanity", "--examples", 2, "--out", out, "--json")
    assert status == 0, err
    results = json.loads(printed)
    assert results == json.loads((out / "results.json").read_text())
    gradcam = results["methods"]["gradcam"]
    assert set(gradcam) == {"pointing_game", "deletion_auc", "sparseness"}
    stats = gradcam["pointing_game"]
    assert set(stats) == {"mean", "std", "ci95", "n", "higher_is_better"}
    assert stats["n"] == 12 and stats["higher_is_better"] is True
    assert stats["ci95"][0] <= stats["mean"] <= stats["ci95"][1]
    assert gradcam["pointing_game"]["mean"] > results["methods"]["random"]["pointing_game"][
        "mean"]
    assert results["sanity"]["gradcam"]["layers"][0] == "fc"
    assert "random" not in results["sanity"]
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == 24 and rows[0]["method"] == "gradcam" and rows[0]["target"] != ""
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "evaluate" and manifest["options"]["targets"] == "labels"
    assert manifest["options"]["tolerance"] == 4  # 15 px at 224, at 64
    pngs = ["curve-deletion.png", "sanity-spearman.png", "sanity-ssim.png", "examples.png"]
    assert [o.get("png") for o in manifest["outputs"]] == [None, *pngs]
    assert manifest["outputs"][0]["table"] == "results.md"
    for name in pngs:
        width, height = Image.open(out / name).size
        # one chart per figure (5 x 3.6 inches at 100 dpi), not a strip of panels
        assert (width, height) == (500, 360) or name == "examples.png"
    table = (out / "results.md").read_text().splitlines()
    assert table[0] == "| method | pointing_game ↑ | deletion_auc ↓ | sparseness ↑ |"
    assert table[2].startswith("| gradcam | ")
    page = (out / "index.html").read_text()
    assert "curve-deletion.png" in page and "sanity-ssim.png" in page
    # the gallery shows the table itself, every cell of it
    assert "<th>deletion_auc ↓</th>" in page
    gradcam_row = table[2].strip("|").split("|")
    assert "<tr>" + "".join(f"<td>{c.strip()}</td>" for c in gradcam_row) + "</tr>" in page
    assert "12 images: mean ± std [95% bootstrap interval]" in page


def test_evaluate_prints_the_markdown_table(trained_shapes, tmp_path, capsys):
    status, printed, err = _run(capsys, "evaluate", "--model", trained_shapes[0], "--limit", 4,
                                "--methods", "random", "--metrics", "iou", "--examples", 0,
                                "--out", tmp_path / "run")
    assert status == 0, err
    lines = printed.splitlines()
    assert lines[0] == "| method | iou ↑ |"
    assert lines[2].startswith("| random | ") and "±" in lines[2]
    assert lines[-1] == f"wrote the evaluation to {tmp_path / 'run'}"
    assert not (tmp_path / "run" / "examples.png").exists()


@pytest.fixture
def folder(tmp_path):
    """Two shapes images in class-named folders, with masks for each."""
    rng = np.random.default_rng(5)
    for label in (0, 3):
        scene = render_scene(rng, 64, [label])
        name = SHAPE_CLASSES[label]
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.fromarray(scene.image).save(tmp_path / "images" / name / "a.png")
        (tmp_path / "masks" / name).mkdir(parents=True)
        Image.fromarray(scene.masks[0].astype(np.uint8) * 255).save(
            tmp_path / "masks" / name / "a.png")
    return tmp_path


def test_evaluate_an_image_folder_with_masks(trained_shapes, folder, capsys):
    status, printed, err = _run(
        capsys, "evaluate", "--model", trained_shapes[0], "--dataset",
        f"imagefolder:{folder / 'images'}", "--masks", folder / "masks", "--methods", "gradcam",
        "--metrics", "relevance_mass,pointing_game", "--examples", 0, "--out", folder / "run",
        "--json")
    assert status == 0, err
    results = json.loads(printed)["methods"]["gradcam"]
    assert results["relevance_mass"]["n"] == 2 and results["relevance_mass"]["mean"] > 0.2
    rows = list(csv.DictReader((folder / "run" / "per_image.csv").open()))
    assert [r["target"] for r in rows] == ["0", "3"]  # circle, star: from the folder names


def test_without_masks_localisation_is_left_out(trained_shapes, folder, capsys):
    status, printed, err = _run(
        capsys, "evaluate", "--model", trained_shapes[0], "--dataset",
        f"imagefolder:{folder / 'images'}", "--methods", "random", "--steps", 4,
        "--examples", 0, "--out", folder / "run", "--json")
    assert status == 0, err
    assert "pointing_game" not in json.loads(printed)["methods"]["random"]
    assert "deletion_auc" in json.loads(printed)["methods"]["random"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--methods", "gradcm"], "unknown method 'gradcm'; did you mean 'gradcam'"),
    (["--metrics", "deletion"], "unknown metric 'deletion'"),
    (["--dataset", "imagefolder:{images}", "--metrics", "iou"], "localisation metrics need"),
    (["--dataset", "imagefolder:{images}", "--masks", "{empty}"], "no mask for"),
    (["--dataset", "imagefolder:{missing}"], "no such folder"),
    (["--dataset", "cifar"], "unknown dataset 'cifar'"),
    (["--layer", "features.99"], "features.99"),
])
def test_bad_input_is_one_line(trained_shapes, folder, capsys, argv, message):
    out = folder / "run"
    (folder / "empty").mkdir()
    argv = [a.format(images=folder / "images", missing=folder / "nope", empty=folder / "empty")
            for a in argv]
    status, _, err = _run(capsys, "evaluate", "--model", trained_shapes[0], "--limit", 2,
                          "--methods", "gradcam", "--steps", 2, "--out", out, *argv)
    lines = err.strip().splitlines()
    assert status == 2 and message in lines[-1], err
    assert lines[-1].startswith(("vistool: error:", "vistool evaluate: error:"))
    assert "Traceback" not in err
    assert not out.exists()
