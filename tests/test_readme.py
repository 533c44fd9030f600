"""The README's commands run as written.

Every line of the README's ```bash blocks (lines continued with a trailing backslash are
joined, comments dropped) is either run here through ``vistool.cli.main`` in a fresh
directory that holds the files it names, or listed in ``SKIPPED`` with the reason it
cannot run offline in test time. A README line that is neither fails the test, so a new
line must be made runnable or listed; a listed line that left the README fails too.
"""

from __future__ import annotations

import json
import re
import runpy
import shlex
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image, ImageDraw

from vistool.cli import main
from vistool.core.checkpoint import save_checkpoint
from vistool.core.registry import get_model, list_models, model_defaults
from vistool.data.shapes import SHAPE_CLASSES, render_scene

README = Path(__file__).resolve().parents[1] / "README.md"

# README lines that are not run, keyed by the line as shlex.join writes it, with why.
SKIPPED = {
    "make demo": "tests/test_demo.py runs scripts/demo.py (what it calls) with the models "
                 "trained once per session, and opens its gallery in Chromium",
    "make test": "runs the whole test suite, this file included",
    "vistool gradcam --model deeplabv3_resnet50 --target person img.jpg": "deeplabv3_resnet50 "
        "at 520 pixels takes long on a CPU without its weights (a download); "
        "tests/test_segmentation.py runs the command on fcn_resnet50 at 64 pixels",
    "vistool dashboard": "serves Streamlit until stopped; tests/test_dashboard.py starts and "
                         "stops the server and drives the app",
    "vistool dashboard --host 0.0.0.0 --port 8501 --allow-path /data/checkpoints": "serves "
        "until stopped; tests/test_dashboard_security.py starts the server with --host and "
        "--allow-path and checks where it listens and what the page may read",
    "vistool train lenet-digits": "15 epochs of training, too slow for this file; "
                                  "tests/test_trainers.py trains it",
    "vistool train shapes-cnn --out runs/shapes": "about a minute of training; the test writes "
                                                  "a stand-in for the checkpoint it makes",
    "vistool train lenet-mnist --data-dir data --download": "downloads MNIST",
    "vistool train vae-mnist --dataset digits --epochs 20": "20 epochs of training, too slow "
                                                            "for this file",
    "vistool train transfer-imagefolder --data-dir pets/": "needs a folder of cat and dog photos "
                                                           "and downloads pretrained weights",
    "vistool train resnet-cifar10 --resume --out runs/r": "needs CIFAR-10 (a download), an "
                                                          "interrupted run and hours of training",
    "vistool style cat.jpg brick.jpg --size 512 --steps 300": "300 L-BFGS evaluations of "
        "VGG19 at 512 pixels take minutes on a CPU; tests/test_style.py runs the command small",
    "vistool style --fast runs/style/best.safetensors cat.jpg photos/": "needs the network "
        "that the fast-style line trains; tests/test_fast_style.py trains one and runs this",
    "vistool train fast-style --style brick.jpg --data-dir photos/ --out runs/style": "needs "
        "VGG16's ImageNet weights (a download); tests/test_fast_style.py trains it small "
        "against a random VGG16",
    "torchrun --nproc-per-node 2 -m vistool gradcam --model resnet18 'photos/**/*.jpg' --out "
    "audit/": "two processes with the ImageNet weights; tests/test_streaming.py runs torchrun "
              "with two gloo processes",
    "vistool generate --model runs/vae-mnist/best.safetensors --traverse 0 --interpolate 4 "
    "--latent-scatter": "needs the VAE the line above trains; tests/test_generative.py trains "
                        "one for a few steps and runs the command",
    "vistool generate --model runs/dcgan-mnist/best.safetensors --samples 64 --seed 0 --series "
    "runs/dcgan-mnist": "needs a trained DCGAN run; tests/test_generative.py runs it",
    "vistool gradcam --model runs/dcgan-mnist/best.safetensors --part discriminator --target "
    "fake img.png": "needs a trained DCGAN; tests/test_generative.py runs it",
    "vistool evaluate --model resnet18 --dataset imagefolder:pets/ --masks pets-masks/ --methods "
    "gradcam,layercam": "needs photos with object masks; tests/test_evaluate_cli.py runs an "
                        "image folder with masks",
    "torchrun --nproc_per_node 4 -m vistool train resnet-cifar10 --amp":
        "4 processes on 4 GPUs and CIFAR-10; tests/test_trainers.py checks DDP with 2 CPU "
        "processes",
    ".venv/bin/python scripts/gpu_check.py": "compares a GPU with the CPU; on a CPU machine "
        "tests/test_gpu_check.py runs it as a dry run (--device cpu --quick)",
    ".venv/bin/python scripts/gpu_check.py --only cam": "the same, for the CAM checks",
}

IMAGE_COMMANDS = ("activations", "gradcam", "attribute")


def shell_lines(markdown: str) -> list[str]:
    """The commands of the ```bash blocks of ``markdown``: continuations joined, comments
    dropped, each normalised by ``shlex`` (``shlex.join(shlex.split(line))``)."""
    commands, fence, pending = [], None, ""
    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = stripped[3:].strip() if fence is None else None
            continue
        if fence != "bash":
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        tokens = shlex.split(pending + stripped, comments=True)
        pending = ""
        if tokens:
            commands.append(shlex.join(tokens))
    return commands


def cli_argv(line: str) -> list[str] | None:
    """The arguments of ``vistool.cli.main`` for a ``vistool ...`` or ``python -m vistool
    ...`` line (None for other programs)."""
    tokens = shlex.split(line)
    if tokens[0] == "vistool":
        return tokens[1:]
    if tokens[:3] == ["python", "-m", "vistool"]:
        return tokens[3:]
    return None


def offline(argv: list[str]) -> list[str]:
    """``argv`` with ``--weights none`` for a torchvision or timm model given no ``--weights``: the
    default pretrained weights would be downloaded (45 to 550 MB, no network in tests).
    Random weights run the same code apart from the download, and the class names (which
    ``--target tabby`` needs) come with the model either way."""
    model = _option(argv, "--model")
    pretrained = model in TORCHVISION_MODELS or (model or "").startswith("timm:")
    if pretrained and "--weights" not in argv:
        return [*argv, "--weights", "none"]
    return argv


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


TORCHVISION_MODELS = set(torchvision.models.list_models(module=torchvision.models))
LINES = shell_lines(README.read_text())
RUN = [line for line in LINES if line not in SKIPPED and cli_argv(line) is not None]


# ---------------------------------------------------------------------------------------------
# The files the README's lines name, written small and real (images PIL can open).


def _photo(name: str) -> Callable[[Path], None]:
    """A photograph that ships with scikit-image, 128 pixels wide."""

    def write(path: Path) -> None:
        from skimage import data

        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.resize((128, 128 * image.height // image.width)).save(path)

    return write


def _photos(path: Path) -> None:
    path.mkdir()
    _photo("astronaut")(path / "astronaut.jpg")
    _photo("rocket")(path / "rocket.png")


def _shapes_scene(path: Path) -> None:
    rng = np.random.default_rng(0)
    scene = render_scene(rng, 64, [SHAPE_CLASSES.index("star")])
    Image.fromarray(scene.image).resize((128, 128), Image.NEAREST).save(path)


def _digit(path: Path) -> None:
    image = Image.new("L", (28, 28))
    ImageDraw.Draw(image).line([(7, 6), (21, 6), (12, 23)], fill=255, width=3)  # a 7
    image.save(path)


MYNET = """from torch import nn


def build():
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
"""


def _weights(path: Path) -> None:
    script = path.with_name("mynet.py")
    if not script.exists():
        script.write_text(MYNET)
    torch.manual_seed(0)
    torch.save(runpy.run_path(str(script))["build"]().state_dict(), path)


FILES: dict[str, Callable[[Path], None]] = {
    "cat.jpg": _photo("chelsea"),
    "img.jpg": _photo("coffee"),
    "ref.jpg": _photo("chelsea"),
    "img.png": _shapes_scene,
    "photos/": _photos,
    "digit.png": _digit,
    "mynet.py": lambda path: path.write_text(MYNET),
    "w.pt": _weights,
    "classes.txt": lambda path: path.write_text("\n".join(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])),
}


def write_files(argv: list[str], root: Path, shapes_ckpt: Path) -> None:
    """Write into ``root`` the files that ``argv`` names (a ``file.py:factory`` names its file;
    a checkpoint under runs/ is what a training line of the README writes: a stand-in)."""
    for arg in argv:
        name = arg.partition(":")[0] if ".py:" in arg else arg
        if name in FILES and not (root / name).exists():
            FILES[name](root / name)
        elif name.startswith("runs/") and name.endswith(".safetensors"):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(shapes_ckpt, root / name)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def shapes_ckpt(tmp_path_factory) -> Path:
    """A stand-in for the shapes CNN that ``make demo`` trains: the real architecture, classes
    and metadata of the recipe, untrained weights (training takes a minute)."""
    torch.manual_seed(0)
    kwargs = {"num_classes": len(SHAPE_CLASSES), "in_channels": 3, "image_size": 64}
    path = tmp_path_factory.mktemp("shapes") / "best.safetensors"
    save_checkpoint(path, get_model("shapes_cnn", **kwargs),
                    {"arch": "shapes_cnn", "arch_kwargs": kwargs, "recipe": "shapes-cnn",
                     "dataset": "shapes", "classes": list(SHAPE_CLASSES), "task": "classify",
                     **model_defaults("shapes_cnn")})
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch, shapes_ckpt) -> Path:
    """An empty current directory, and a vistool cache that holds the demo's shapes CNN at
    ``$VISTOOL_CACHE/shapes-cnn-v3/best.safetensors``, where ``make demo`` caches it."""
    cache = tmp_path / "cache"
    (cache / "shapes-cnn-v3").mkdir(parents=True)
    shutil.copy(shapes_ckpt, cache / "shapes-cnn-v3" / "best.safetensors")
    monkeypatch.setenv("VISTOOL_CACHE", str(cache))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nothing pretrained cached
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


# ---------------------------------------------------------------------------------------------


def test_every_readme_line_is_run_or_listed():
    unknown = [line for line in LINES if line not in SKIPPED and cli_argv(line) is None]
    assert not unknown, f"README lines neither run by this test nor listed in SKIPPED: {unknown}"
    stale = sorted(set(SKIPPED) - set(LINES))
    assert not stale, f"SKIPPED lists lines the README no longer has: {stale}"
    assert len(RUN) >= 10


def test_readme_opens_with_make_demo_and_make_test():
    first_block = README.read_text().split("```bash\n", 1)[1].split("```", 1)[0]
    assert README.read_text().startswith("# vistool\n\n```bash\n")
    assert shell_lines(f"```bash\n{first_block}```") == ["make demo", "make test"]


def test_every_picture_the_readme_shows_exists_and_is_small():
    """Every ``![alt](path)`` of the README is a committed picture (regenerated by
    ``scripts/readme_figures.py``), not a broken link, and light enough for a first screen;
    the evaluation table that script writes is there."""
    text = README.read_text()
    links = re.findall(r"!\[([^\]]*)\]\(([^)\s]+)\)", text)
    assert len(links) >= 5
    in_the_first_screen = text.index(links[0][1]) < text.index("## The CLI at a glance")
    assert in_the_first_screen
    for alt, link in links:
        path = README.parent / link
        assert alt and path.is_file(), f"the README shows {link}, which does not exist"
        assert path.stat().st_size < 150_000, f"{link} is {path.stat().st_size} bytes"
        Image.open(path).verify()
    table = text.split("<!-- evaluation-table -->", 1)[1].split("<!-- /evaluation-table -->")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | pointing_game ↑") and len(rows) >= 3


def test_shell_lines_joins_continuations_and_drops_comments():
    text = ("```bash\n# a comment\nvistool a --x 'y z' \\\n    --w 1   # note\n```\n"
            "```python\nvistool not-shell\n```\n\n```bash\npython -m vistool --help\n```\n")
    assert shell_lines(text) == ["vistool a --x 'y z' --w 1", "python -m vistool --help"]
    assert cli_argv("python -m vistool --help") == ["--help"]
    assert offline(["gradcam", "--model", "resnet18", "x.jpg"])[-2:] == ["--weights", "none"]
    assert offline(["gradcam", "--model", "shapes_cnn", "x.jpg"]) == [
        "gradcam", "--model", "shapes_cnn", "x.jpg"]


@pytest.mark.parametrize("line", RUN, ids=RUN)
def test_readme_line_runs(line, workdir, shapes_ckpt, capsys):
    argv = offline(cli_argv(line))
    write_files(argv, workdir, shapes_ckpt)
    try:
        status = main(argv)
    except SystemExit as exc:  # --help
        status = exc.code
    out, err = capsys.readouterr()
    assert status == 0, f"{shlex.join(argv)} exited with {status}: {err[-2000:]}"
    if argv[0] not in IMAGE_COMMANDS:
        assert out.strip()
        return
    (run,) = (workdir / "vistool-out").iterdir()
    info = json.loads((run / "manifest.json").read_text())
    assert info["outputs"] and all((run / o["png"]).is_file() for o in info["outputs"])
    model = _option(argv, "--model")
    if model in list_models():  # a book model name: the trained checkpoint, not random weights
        assert info["model"]["weights"].startswith("trained checkpoint"), info["model"]
        assert "RANDOM" not in err
    target = _option(argv, "--target")
    if target is not None:
        assert {o["name"] for o in info["outputs"]} == {target}
