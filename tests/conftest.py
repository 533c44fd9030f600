"""Shared fixtures: tiny models with known weights and image files on disk."""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn


def save_tiny_shapes_checkpoint(path: Path) -> Path:
    """A seeded, untrained 3-class shapes CNN (width 4, 32²) saved as a vistool checkpoint."""
    from trainers.models import get_model
    from vistool.core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(path, get_model("shapes_cnn", num_classes=3, width=4),
                    {"arch": "shapes_cnn", "arch_kwargs": {"num_classes": 3, "width": 4},
                     "classes": ["a", "b", "c"], "input_size": [3, 32, 32],
                     "mean": [0.5] * 3, "std": [0.25] * 3})
    return path


class TinyNet(nn.Module):
    """conv(1->2, 3x3) -> ReLU(inplace) -> GAP -> linear(2->3), on 1x6x6 input."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 3)

    def forward(self, x):
        return self.fc(self.pool(self.relu(self.conv(x))).flatten(1))


@pytest.fixture
def tiny_net() -> TinyNet:
    torch.manual_seed(0)
    return TinyNet()


@pytest.fixture
def rgb_file(tmp_path):
    """A 40x30 RGB PNG with a known gradient."""
    arr = np.zeros((30, 40, 3), np.uint8)
    arr[..., 0] = np.arange(40, dtype=np.uint8)[None, :] * 6
    arr[..., 1] = np.arange(30, dtype=np.uint8)[:, None] * 8
    arr[..., 2] = 100
    path = tmp_path / "gradient.png"
    Image.fromarray(arr).save(path)
    return path


ROOT = Path(__file__).resolve().parents[1]
# The reference implementations the tests compare with (pytorch-grad-cam, torch-cam, Quantus):
# `make test` installs them, pinned and without their dependencies, into .venv/peers.
PEERS = Path(sys.prefix) / "peers"


def missing(reason: str) -> NoReturn:
    """Skip the test, saying why; under ``CI=true`` fail with the reason instead: in CI every
    test runs, and a test that cannot is an error of the machine's setup."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run, not skip)", pytrace=False)
    pytest.skip(reason)


def require_peer(module: str):
    """Import a reference implementation from ``.venv/peers`` (appended to ``sys.path``, so
    the project's own packages win), or skip (fail under ``CI=true``) saying it is missing."""
    if PEERS.is_dir() and str(PEERS) not in sys.path:
        sys.path.append(str(PEERS))
    try:
        return importlib.import_module(module)
    except ImportError as error:
        missing(f"the peer {module!r} cannot be imported ({error}); `make test` (or `make "
                f"peers`) installs it into {PEERS}")


if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)  # one thread per worker: the workers share the cores


#: Test files that take minutes: collected first, so that ``-n 2 --dist loadfile`` (which
#: hands files out in collection order) runs them beside the rest instead of after it.
LONG_FILES = ("test_demo.py",)


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONG_FILES)  # stable: else as collected


@pytest.fixture
def terminal(monkeypatch):
    """``terminal()`` makes stderr say it is a terminal, where progress bars are drawn (a log
    gets none). Call it in the test body: capsys and capfd replace stderr only then."""
    return lambda: monkeypatch.setattr(sys.stderr, "isatty", lambda: True)


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module's tests (``pytestmark = pytest.mark.usefixtures(
    "one_thread")``): small models run fastest on one thread, and OpenMP threads that spin
    against other processes on a shared 2-core machine made whole files ~2.5x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# What the trained shapes model depends on: the trainers (models, loop, recipes) and vistool's
# shapes generator and checkpoint format. The cache is keyed on their source.
SHAPES_SOURCES = ("trainers", "vistool/data", "vistool/core/checkpoint.py")


def shapes_cache_key(root: Path = ROOT) -> str:
    """A digest of the sources the trained shapes model depends on (and torch's version)."""
    digest = hashlib.sha256(torch.__version__.encode())
    for source in SHAPES_SOURCES:
        path = root / source
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_shapes(tmp_path_factory):
    """The shapes-cnn recipe trained once, shared by the xdist workers (a file lock makes one
    of them train and the others wait for it) and, outside xdist, by later sessions: the
    folder is keyed on :func:`shapes_cache_key`, so a change to the trainers, the recipe or
    the shapes generator trains afresh.

    Returns ``(checkpoint_path, best_metrics)``.
    """
    import json

    from filelock import FileLock

    from trainers.recipes import run_recipe

    root = tmp_path_factory.getbasetemp().parent / f"trained-shapes-cnn-{shapes_cache_key()}"
    root.mkdir(exist_ok=True)
    with FileLock(str(root) + ".lock"):
        done = root / "metrics.json"
        if not done.is_file():
            metrics = run_recipe("shapes-cnn", root / "run", device="cpu", progress=False,
                                 log=lambda _line: None)
            done.write_text(json.dumps(metrics))
    return root / "run" / "best.safetensors", json.loads(done.read_text())


@pytest.fixture(scope="session")
def demo_cache(tmp_path_factory, trained_shapes):
    """A vistool cache as ``make demo`` leaves it: the shapes CNN (the :func:`trained_shapes`
    run, where :func:`~trainers.recipes.pretrained_shapes_cnn` looks) and the digits VAE and
    DCGAN of :data:`~trainers.recipes.DEMO_DIGITS`, trained once (minutes) and shared like
    :func:`trained_shapes`. Returns the folder, for ``VISTOOL_CACHE``."""
    import shutil

    from filelock import FileLock

    from trainers.recipes import DEMO_DIGITS, pretrained_digits

    root = tmp_path_factory.getbasetemp().parent / f"demo-cache-{shapes_cache_key()}"
    with FileLock(str(root) + ".lock"):
        done = root / ".complete"
        if not done.is_file():
            (root / "shapes-cnn-v3").mkdir(parents=True, exist_ok=True)
            shutil.copy(trained_shapes[0], root / "shapes-cnn-v3" / "best.safetensors")
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("VISTOOL_CACHE", str(root))
                for recipe, epochs in DEMO_DIGITS:
                    pretrained_digits(recipe, epochs, progress=False, log=lambda _line: None)
            done.touch()
    return root


# Debian's chromium as root, in a closed network: no sandbox, no background connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--disable-dev-shm-usage"]


def _chromium() -> str | None:
    return next((path for path in ("/usr/bin/chromium", shutil.which("chromium"),
                                   shutil.which("chromium-browser")) if path and
                 Path(path).exists()), None)


@pytest.fixture
def browser():
    """Headless system Chromium through Playwright (skips when either is missing)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as error:
        missing(f"the playwright package cannot be imported ({error}); pip install -e '.[dev]'")
    executable = _chromium()
    if executable is None:
        apt = ROOT / ".venv" / "apt-chromium.log"  # `make test`'s attempt to install it
        tail = ("; apt-get's output ended:\n" + "\n".join(apt.read_text(errors="replace")
                                                          .splitlines()[-15:])
                if apt.is_file() else "")
        missing("no chromium executable (Debian: apt-get install chromium; `make test` "
                f"installs it when run as root){tail}")
    with sync_playwright() as driver:
        launched = driver.chromium.launch(executable_path=executable, headless=True,
                                          args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
