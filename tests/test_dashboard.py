"""The Streamlit dashboard: the app driven headless with streamlit's AppTest, and the
``vistool dashboard`` server started, stopped by a signal and checked for leftovers."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from vistool.cli import main as vistool
from vistool.core.checkpoint import save_checkpoint
from vistool.core.errors import RandomWeightsWarning
from vistool.core.registry import get_model

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


def _checkpoint(path: Path, classes: list[str], size: int = 64) -> Path:
    """A small shapes_cnn checkpoint (random weights, given class names) at ``path``."""
    torch.manual_seed(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = {"num_classes": len(classes), "width": 4}
    save_checkpoint(path, get_model("shapes_cnn", **kwargs),
                    {"arch": "shapes_cnn", "arch_kwargs": kwargs, "classes": classes,
                     "input_size": [3, size, size]})
    return path


@pytest.fixture
def app(tmp_path, monkeypatch):
    """The app, with an empty vistool cache, no runs/ folder and no cached models."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VISTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    st.cache_resource.clear()
    return AppTest.from_file(APP, default_timeout=120)


def test_dashboard_shows_layers_activations_and_predictions(app, tmp_path):
    path = _checkpoint(tmp_path / "m.safetensors", ["yes", "no"], size=32)
    app.run()
    app.text_input(key="model").input(str(path)).run()
    assert not app.exception
    assert not app.error
    assert [t.label for t in app.tabs] == ["Layers", "Activations", "Class activation map"]
    assert app.selectbox(key="layer").value == "features"
    assert set(app.table[0].value["class"]) == {"yes", "no"}
    app.selectbox(key="layer").select("features.0").run()
    captions = [img.proto.imgs[0].caption for img in app.get("image")]
    assert captions[:2] == ["input", "features.0: (4, 32, 32)"]
    assert captions[2].startswith("gradcam · features · class ")
    assert captions[2].endswith("(closed form)")
    app.selectbox(key="cam_method").select("cam").run()
    app.selectbox(key="cam_layer").select("features.3").run()
    assert "not followed by global average pooling" in app.error[0].value
    stats = app.dataframe[-1].value
    assert list(stats["channel"]) == [0, 1, 2, 3]


def test_dashboard_reports_bad_model_in_one_line(app):
    app.run()
    app.text_input(key="model").input("resnet81").run()
    assert not app.exception
    assert "did you mean 'resnet18'" in app.error[0].value


def test_dashboard_opens_on_the_cached_trained_demo_model(app, tmp_path):
    cached = _checkpoint(tmp_path / "cache" / "shapes-cnn-v3" / "best.safetensors",
                         ["alpha", "beta", "gamma"])
    app.run()
    assert not app.exception
    assert not app.error
    assert not app.warning
    assert (app.text_input(key="model").value, app.text_input(key="weights").value) == (
        "shapes_cnn", "default")
    assert set(app.table[0].value["class"]) == {"alpha", "beta", "gamma"}
    assert app.sidebar.caption[0].value == f"Weights: trained checkpoint {cached}"


def test_dashboard_says_prominently_when_the_weights_are_random(app):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        app.run()
    assert not app.exception
    assert not app.error
    assert len(app.warning) == 1
    notice = app.warning[0].value
    assert "weights are random" in notice
    assert "`make demo`" in notice and "`vistool train shapes-cnn`" in notice
    assert "random initialisation" in app.sidebar.caption[0].value
    assert not [w for w in caught if issubclass(w.category, RandomWeightsWarning)]


@pytest.mark.parametrize(("args", "fields"), [
    (["--checkpoint", "M"], ("M", "default")),
    (["--model", "M", "--checkpoint", "M", "--colour", "red"], ("M", "M")),
])
def test_dashboard_opens_on_the_model_its_arguments_name(app, tmp_path, monkeypatch, args,
                                                         fields):
    path = str(_checkpoint(tmp_path / "m.safetensors", ["yes", "no"], size=32))
    monkeypatch.setattr(sys, "argv", [APP, *(path if a == "M" else a for a in args)])
    app.run()
    assert not app.exception
    assert not app.error
    assert (app.text_input(key="model").value, app.text_input(key="weights").value) == tuple(
        path if f == "M" else f for f in fields)
    assert set(app.table[0].value["class"]) == {"yes", "no"}
    assert [w.value for w in app.warning] == (
        ["ignored dashboard arguments '--colour red'; it takes --model M and --checkpoint F"]
        if "--colour" in args else [])


def test_dashboard_command_refuses_a_missing_checkpoint_before_serving(capsys):
    assert vistool(["dashboard", "--checkpoint", "missing.safetensors"]) == 2
    assert "checkpoint 'missing.safetensors' does not exist" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", "/_stcore/health")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _wait_until_healthy(proc: subprocess.Popen, port: int, log: Path, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the dashboard exited with {proc.returncode}:\n{log.read_text()}")
        if _healthy(port):
            return
        time.sleep(0.25)
    pytest.fail(f"the dashboard did not answer on port {port} in {timeout} s:\n{log.read_text()}")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every live (not zombie) process, from /proc."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rpartition(")")[2].split()[:2]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8",
                                                                                   "replace")
        except OSError:  # it ended meanwhile
            continue
        if state != "Z":
            found[int(entry.name)] = (int(ppid), cmdline)
    return found


def _descendants(pid: int) -> set[int]:
    processes = _processes()
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        children = [p for p, (ppid, _) in processes.items() if ppid == parent]
        found.update(children)
        todo.extend(children)
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="looks for leftovers in /proc")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_dashboard_server_stops_on_a_signal_and_leaves_nothing_serving(signum, tmp_path):
    port = _free_port()
    log = tmp_path / "dashboard.log"
    env = {**os.environ, "VISTOOL_CACHE": str(tmp_path / "cache"),
           "STREAMLIT_SERVER_ADDRESS": "127.0.0.1"}  # loopback only
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vistool", "dashboard", "--headless", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        _wait_until_healthy(proc, port, log)
        children = _descendants(proc.pid)
        proc.send_signal(signum)
        try:
            status = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the dashboard still runs 30 s after {signum.name}:\n{log.read_text()}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert status == 0, log.read_text()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    left = {pid: cmd for pid, (_, cmd) in _processes().items()
            if pid in children or str(port) in cmd.split()}
    assert not left, f"still running after {signum.name}: {left}"
