"""``make demo`` as a newcomer meets it: its DCGAN draws digits (a digits classifier trained
here calls most samples a digit with confidence, and noise it does not), and its gallery,
opened in Chromium, shows the evaluation table and the GAN's samples. Screenshots go to
``test-artifacts/demo/``. The demo's models come from :func:`conftest.demo_cache`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT
from PIL import Image
from torch import nn

import vistool
from trainers.data import load_data
from trainers.recipes import DEMO_DIGITS
from vistool import generative as gen

pytestmark = pytest.mark.usefixtures("one_thread")

ARTIFACTS = ROOT / "test-artifacts" / "demo"
CONFIDENT = 0.8  # a sample is "a digit" when the classifier gives one class this probability


@pytest.fixture(scope="module")
def digits_classifier():
    """A small CNN trained here on scikit-learn's digits at 28² in [0, 1] (the GANs' data):
    about 95% validation accuracy in seconds."""
    torch.manual_seed(0)
    data = load_data("digits", (1, 28, 28), [0.0], [1.0], seed=0)
    images, labels = (torch.stack(t) if i == 0 else torch.tensor(t)
                      for i, t in enumerate(zip(*data.train)))
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                        nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(8):
        order = torch.randperm(len(images))
        for first in range(0, len(images), 64):
            batch = order[first:first + 64]
            loss = nn.functional.cross_entropy(net(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    net.eval()
    val_images = torch.stack([x for x, _ in data.val])
    val_labels = torch.tensor([y for _, y in data.val])
    with torch.no_grad():
        assert (net(val_images).argmax(1) == val_labels).float().mean() > 0.9
    return net


def digit_share(classifier: nn.Module, images: torch.Tensor) -> float:
    """The share of ``images`` (N, 1, 28, 28) in [0, 1] that ``classifier`` calls a digit
    with probability at least ``CONFIDENT``."""
    with torch.no_grad():
        confidence = classifier(images).softmax(1).amax(1)
    return float((confidence >= CONFIDENT).float().mean())


def grid_tiles(path: Path, count: int = 64) -> torch.Tensor:
    """The tiles of a square sample grid as ``vistool generate`` writes it (2-pixel white
    padding), grey, (count, 1, h, w) in [0, 1]."""
    grid = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
    cols = int(count ** 0.5)
    size = (grid.shape[1] - 2) // cols - 2
    return torch.stack([torch.from_numpy(grid[2 + r * (size + 2):2 + r * (size + 2) + size,
                                              2 + c * (size + 2):2 + c * (size + 2) + size])
                        for r in range(cols) for c in range(cols)])[:, None]


def test_the_demo_dcgan_is_its_last_epoch_and_draws_digits(demo_cache, digits_classifier):
    epochs = dict(DEMO_DIGITS)["dcgan-mnist"]
    run = demo_cache / f"dcgan-mnist-digits-{epochs}ep-v2"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["best_by"].startswith("the last epoch")
    assert manifest["best"]["epoch"] == epochs
    loaded = vistool.load_model(run / "best.safetensors", device="cpu")
    assert loaded.metadata["epoch"] == epochs
    _, samples = gen.sample(loaded.model, 64, seed=0)  # the demo's grid: 64 samples, seed 0
    noise = torch.rand(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    # measured: 0.66 of the samples; 0.05 of uniform noise (an epoch-2 generator: 0.00)
    assert digit_share(digits_classifier, samples) >= 0.5
    assert digit_share(digits_classifier, noise) <= 0.15


def test_make_demo_gallery_in_a_browser(demo_cache, browser, digits_classifier, tmp_path):
    """``scripts/demo.py`` as ``make demo`` runs it, into a log (no progress bars there), and
    its gallery in Chromium: the evaluation table with intervals, one chart per curve, the
    DCGAN's digits; then ``scripts/readme_figures.py`` on that output."""
    out = tmp_path / "demo"
    env = {**os.environ, "VISTOOL_CACHE": str(demo_cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "scripts/demo.py", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "\r" not in log, "progress bars in a log: " + repr(log[:300])
    assert "| gradcam |" in done.stdout  # the evaluate step printed its table

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto((out / "index.html").as_uri())
    table = page.locator("table.results")
    table.wait_for()
    head = table.locator("th").all_inner_texts()
    assert head[0] == "method" and "deletion_auc ↓" in head and "pointing_game ↑" in head
    methods = [row.locator("td").first.inner_text() for row in table.locator("tr").all()[1:]]
    assert methods == ["gradcam", "layercam", "saliency", "guided-backprop", "random"]
    interval = re.compile(r"^-?\d\.\d{3} ± \d\.\d{3} \[-?\d\.\d{3}, -?\d\.\d{3}\]$")
    cells = table.locator("td").all_inner_texts()
    assert sum(bool(interval.match(c)) for c in cells) >= len(methods) * (len(head) - 2)
    charts = page.locator("figure.chart img")
    assert charts.count() == 5  # three curves (ROAD LeRF is left out) and two sanity panels
    samples = page.locator("img[src='12-dcgan/samples.png']")
    samples.scroll_into_view_if_needed()
    assert samples.evaluate("img => img.complete && img.naturalWidth") == 242
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gallery.png"), full_page=True)
    table.screenshot(path=str(ARTIFACTS / "evaluation-table.png"))
    samples.screenshot(path=str(ARTIFACTS / "dcgan-samples.png"))
    page.close()
    # the picture the page shows is the demo GAN's digits, not noise
    assert digit_share(digits_classifier, grid_tiles(out / "12-dcgan" / "samples.png")) >= 0.5

    readme = tmp_path / "README.md"
    readme.write_text("before\n<!-- evaluation-table -->\nold\n<!-- /evaluation-table -->\n")
    figures = subprocess.run([sys.executable, "scripts/readme_figures.py", "--demo", str(out),
                              "--docs", str(tmp_path / "figures"), "--readme", str(readme)],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert figures.returncode == 0, figures.stderr
    committed = sorted(p.name for p in (ROOT / "docs" / "figures").iterdir())
    assert sorted(p.name for p in (tmp_path / "figures").iterdir()) == committed
    assert "\n| gradcam | " in readme.read_text() and "old" not in readme.read_text()
