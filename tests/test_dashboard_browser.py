"""The dashboard end to end in a real browser: ``vistool dashboard`` served on a free localhost
port and driven with Playwright through the system Chromium (headless). Screenshots of each
stage are written to ``test-artifacts/dashboard/`` at the repository root.

Needs the ``playwright`` package (the ``dev`` extra) and Debian's ``chromium`` (``make test``
installs it when it can); without either the test skips, saying which is missing (and why apt
could not install chromium), and under ``CI=true`` it fails instead.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from dashboard_helpers import free_port, small_checkpoint, wait_until_healthy
from PIL import Image

from vistool.data.shapes import render_scene

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
TIMEOUT_MS = 60_000  # the first model load and render take a while on a small CPU


@pytest.fixture
def dashboard(tmp_path):
    """The URL (with the token it printed) of ``vistool dashboard --model <small checkpoint>``
    served on 127.0.0.1; the server is stopped with SIGTERM afterwards."""
    model = small_checkpoint(tmp_path / "shapes.safetensors", ["circle", "square", "triangle"])
    port = free_port()
    log = tmp_path / "dashboard.log"
    env = {**os.environ, "VISTOOL_CACHE": str(tmp_path / "cache"),
           "STREAMLIT_SERVER_ADDRESS": "127.0.0.1",  # loopback only
           "STREAMLIT_BROWSER_GATHER_USAGE_STATS": "false"}
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vistool", "dashboard", "--headless", "--port", str(port),
             "--model", str(model)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        wait_until_healthy(proc, port, log)
        from dashboard_helpers import start_line

        yield re.search(r"open (\S+)$", start_line(log)).group(1), log  # with its token
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _gradcam_overlay(page):
    """Open the CAM tab and return its gradcam overlay's picture once it is drawn."""
    page.get_by_role("tab", name="Class activation maps").click()
    panel = page.get_by_role("tabpanel", name="Class activation maps")
    overlay = panel.locator('[data-testid="stImage"]').filter(
        has=page.locator('[data-testid="stImageCaption"]', has_text=re.compile(r"^gradcam")))
    picture = overlay.first.locator("img")
    picture.wait_for()
    _settle(page)
    return picture


def _settle(page, timeout: float = TIMEOUT_MS) -> None:
    """Wait until the script (or fragment) run that the last interaction started is over."""
    page.wait_for_timeout(300)  # let the rerun request reach the server
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]',
                           timeout=timeout)
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=timeout)


def _png(image) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(image)).convert("RGB"), dtype=np.float64)


def _heat_of_overlay(overlay: np.ndarray, image: np.ndarray, alpha: float = 0.5,
                     colormap: str = "jet") -> tuple[np.ndarray, float]:
    """The heat (0..255) of each pixel of ``overlay = (1 - alpha) image + alpha colormap(heat)``
    and the median distance (0..255 per channel) of the recovered colour from the colormap;
    both pictures are brought to 32² first (the page scales them)."""
    from matplotlib import colormaps

    def small(a):
        return np.asarray(Image.fromarray(a.clip(0, 255).astype(np.uint8)).resize(
            (32, 32), Image.Resampling.BOX), dtype=np.float64)

    colour = (small(overlay) - (1 - alpha) * small(image)) / alpha  # (32, 32, 3)
    lut = colormaps[colormap](np.linspace(0, 1, 256))[:, :3] * 255  # (256, 3)
    distance = np.linalg.norm(colour[:, :, None] - lut, axis=-1)  # (32, 32, 256)
    return distance.argmin(-1), float(np.median(distance.min(-1)) / np.sqrt(3))


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_dashboard_in_a_browser_shows_a_cam_and_follows_the_channel_slider(browser, dashboard,
                                                                          tmp_path):
    from playwright.sync_api import expect  # the browser fixture skipped without it

    url, log = dashboard
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    scene = tmp_path / "scene.png"
    Image.fromarray(render_scene(np.random.default_rng(3), 64, [0, 1, 2]).image).save(scene)

    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        page.goto(url)
        page.wait_for_selector('[data-testid="stApp"]')
        page.get_by_role("tab", name="Class activation maps").wait_for()
        _settle(page)
        _shot(page, "01-opened")
        shown = page.locator('[data-testid="stImage"]').filter(
            has=page.locator('[data-testid="stImageCaption"]', has_text=re.compile(r"^input$")))
        sample = _png(shown.locator("img").screenshot())

        # Sidebar: Image -> "upload an image", then the scene through the "Image file" uploader.
        sidebar = page.locator('[data-testid="stSidebar"]')
        sidebar.locator('[data-testid="stSelectbox"]').filter(
            has=page.get_by_text("Image", exact=True)).click()
        page.get_by_role("option", name="upload an image").click()
        _settle(page)
        uploader = sidebar.locator('[data-testid="stFileUploader"]').filter(
            has=page.get_by_text("Image file", exact=True))
        uploader.locator('input[type="file"]').set_input_files(str(scene))
        uploader.get_by_text("scene.png").wait_for()
        _settle(page)
        _shot(page, "02-uploaded")
        uploaded = _png(shown.locator("img").screenshot(path=str(ARTIFACTS / "02-input.png")))
        assert sample.shape != uploaded.shape or np.abs(sample - uploaded).mean() > 1, \
            "the input did not change to the uploaded image"

        # Class activation maps: the gradcam overlay is the input under the colour map of a
        # map that varies (a blank or constant map would give one colour over the input).
        overlay = _gradcam_overlay(page)
        shot = overlay.screenshot(path=str(ARTIFACTS / "03-gradcam.png"))
        _shot(page, "03-cam-tab")
        pixels = _png(shot)
        assert pixels.shape[0] > 32 and pixels.shape[1] > 32, pixels.shape
        heat, off = _heat_of_overlay(pixels, uploaded)
        assert off < 20, f"the overlay is not the input under jet colours (off by {off:.0f})"
        assert np.percentile(heat, 95) - np.percentile(heat, 5) > 64, \
            f"the gradcam map under the overlay is flat (heat {heat.min()}..{heat.max()})"

        # Activations: moving the Channel slider changes the large view and its caption.
        page.get_by_role("tab", name="Activations").click()
        panel = page.get_by_role("tabpanel", name="Activations")
        large = panel.locator('[data-testid="stImage"]').filter(
            has=page.locator('[data-testid="stImageCaption"]',
                             has_text=re.compile(r" channel \d+$")))
        large.locator("img").wait_for()
        _settle(page)
        caption = large.locator('[data-testid="stImageCaption"]').inner_text()
        before = large.locator("img").screenshot(path=str(ARTIFACTS / "04-channel-before.png"))
        _shot(page, "04-activations-tab")
        thumb = panel.locator('[data-testid="stSlider"]').filter(
            has=page.get_by_text("Channel", exact=True)).get_by_role("slider")
        start = int(thumb.input_value())  # a (visually hidden) input type=range
        maximum = int(thumb.get_attribute("max"))
        thumb.focus()
        for _ in range(3):
            thumb.press("ArrowLeft" if start == maximum else "ArrowRight")
        moved = int(thumb.input_value())
        assert moved != start
        # each key press may rerun the fragment: wait for the last one's caption
        expect(large.locator('[data-testid="stImageCaption"]')).to_have_text(
            re.compile(rf" channel {moved}$"), timeout=TIMEOUT_MS)
        _settle(page)
        after_caption = large.locator('[data-testid="stImageCaption"]').inner_text()
        assert re.search(r" channel (\d+)$", caption).group(1) != \
            re.search(r" channel (\d+)$", after_caption).group(1)
        assert after_caption.endswith(f" channel {moved}"), (after_caption, moved)
        after = large.locator("img").screenshot(path=str(ARTIFACTS / "05-channel-after.png"))
        _shot(page, "05-channel-moved")
        a, b = _png(before), _png(after)
        assert a.shape != b.shape or np.abs(a - b).mean() > 1, "the large view did not change"
    except Exception:
        _shot(page, "99-failure")
        print(log.read_text())
        raise
    finally:
        page.close()


@pytest.fixture
def served_with_token(tmp_path):
    """``vistool dashboard`` as an operator starts it (default host, a random token) on
    ``probe.py:build`` with a small checkpoint's weights; importing ``probe.py`` writes the
    marker ``imported``. Yields the tmp folder, the start-up line and the log."""
    from dashboard_helpers import start_line, stop

    model = small_checkpoint(tmp_path / "shapes.safetensors", ["circle", "square", "triangle"])
    (tmp_path / "probe.py").write_text(
        "from pathlib import Path\nPath(__file__).with_name('imported').write_text('yes')\n"
        "from vistool.core.registry import get_model\n\ndef build():\n"
        "    return get_model('shapes_cnn', num_classes=3, width=4)\n")
    port = free_port()
    log = tmp_path / "dashboard.log"
    env = {key: value for key, value in os.environ.items()
           if key not in ("STREAMLIT_SERVER_ADDRESS", "VISTOOL_DASHBOARD_TOKEN")}
    env["VISTOOL_CACHE"] = str(tmp_path / "cache")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vistool", "dashboard", "--headless", "--port", str(port),
             "--model", "probe.py:build", "--checkpoint", str(model)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        wait_until_healthy(proc, port, log)
        yield tmp_path, start_line(log), log
    finally:
        stop(proc)


def test_dashboard_in_a_browser_wants_the_token_and_runs_no_uploaded_pickle(browser,
                                                                           served_with_token):
    import torch

    tmp_path, line, log = served_with_token
    url = re.search(r"open (\S+)$", line).group(1)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/\?token=[\w-]{32,}", url), line
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    try:
        # Without the token: the prompt only; the model's code was never imported.
        page.goto(url.split("?")[0])
        page.get_by_text("needs its access token").wait_for()
        _settle(page)
        _shot(page, "10-token-prompt")
        assert page.get_by_role("tab").count() == 0
        assert page.locator('[data-testid="stSidebar"]').count() == 0
        assert not (tmp_path / "imported").exists()
        assert page.get_by_text("Deploy", exact=True).count() == 0

        # The URL printed at start-up: the dashboard, and the CAM tab draws its overlay.
        page.goto(url)
        overlay = _gradcam_overlay(page)
        _shot(page, "11-token-cam")
        pixels = _png(overlay.screenshot())
        assert pixels.shape[0] > 32 and pixels.shape[1] > 32, pixels.shape
        assert (tmp_path / "imported").exists()
        assert page.get_by_text("Deploy", exact=True).count() == 0

        # An uploaded pickle whose unpickling would write a marker: refused, never run.
        marker = tmp_path / "pwned"

        class Payload:
            def __reduce__(self):
                return os.system, (f"touch {marker}",)

        evil = tmp_path / "upload" / "evil.pt"
        evil.parent.mkdir()
        torch.save({"weight": torch.zeros(2), "payload": Payload()}, evil)
        sidebar = page.locator('[data-testid="stSidebar"]')
        uploader = sidebar.locator('[data-testid="stFileUploader"]').filter(
            has=page.get_by_text("…or upload a checkpoint", exact=True))
        uploader.locator('input[type="file"]').set_input_files(str(evil))
        error = page.locator('[data-testid="stAlertContentError"]')
        error.first.wait_for()
        _settle(page)
        _shot(page, "12-uploaded-pickle")
        assert error.count() == 1
        assert "could not be loaded safely" in error.first.inner_text()
        assert not marker.exists()
    except Exception:
        _shot(page, "99-token-failure")
        print(log.read_text())
        raise
    finally:
        page.close()
