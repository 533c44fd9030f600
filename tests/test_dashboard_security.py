"""The dashboard is safe to serve: ``vistool dashboard`` listens on loopback unless told
otherwise and wants a token; the page names no code and reads no path outside the allowed
folders; uploaded pickles never run; library messages name flags on the command line and
widgets in the page (the browser side is in tests/test_dashboard_browser.py)."""

from __future__ import annotations

import ast
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dashboard_helpers import (
    free_port,
    listening_addresses,
    small_checkpoint,
    start_line,
    stop,
    wait_until_healthy,
)

from vistool.cli import build_parser, cli_message, parameter_flag
from vistool.core.errors import PARAMETER
from vistool.data.shapes import SHAPE_CLASSES

ROOT = Path(__file__).resolve().parents[1]
APP = str(ROOT / "dashboard" / "app.py")
FLAG = re.compile(r"--[a-z]")
TOKEN = "s3cret-Token_for-tests"
TABS = 7  # the classifier tabs


# --- the page, driven with AppTest --------------------------------------------------------

@pytest.fixture
def page(tmp_path, monkeypatch):
    """The app in an empty folder with ``runs/``, an empty vistool cache, no token, no code
    and no extra folders allowed; it opens on a small checkpoint under ``runs/`` (the
    operator's ``--model``). ``outside/`` holds a checkpoint and an image folder that the page
    must not reach."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VISTOOL_CACHE", str(tmp_path / "cache"))
    _clear_settings(monkeypatch)
    opened = small_checkpoint(tmp_path / "runs" / "opened.safetensors", list(SHAPE_CLASSES), 32)
    small_checkpoint(tmp_path / "outside" / "m.safetensors", ["out1", "out2"], 32)
    monkeypatch.setattr(sys, "argv", [APP, "--model", str(opened)])
    st.cache_resource.clear()
    st.cache_data.clear()
    return AppTest.from_file(APP, default_timeout=120)


def _clear_settings(monkeypatch) -> None:
    """No dashboard settings in the environment (restored afterwards)."""
    for name in ("TOKEN", "ALLOW_CODE", "ALLOW_PATHS"):
        monkeypatch.setenv(f"VISTOOL_DASHBOARD_{name}", "")
        monkeypatch.delenv(f"VISTOOL_DASHBOARD_{name}")


def _one_error(where) -> str:
    """The single ``st.error`` shown, which names no command-line flag."""
    errors = [e.value for e in where.error]
    assert len(errors) == 1, errors
    assert not FLAG.search(errors[0]), f"the page shows a CLI flag: {errors[0]}"
    return errors[0]


def _classes(app) -> set[str]:
    return set(app.table[0].value["class"]) if app.table else set()


def _marker_module(path: Path, marker: Path) -> Path:
    """A Python file whose import writes ``marker``; its ``build`` makes a small net."""
    path.write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
                    "from torch import nn\n\ndef build():\n"
                    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), "
                    "nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))\n")
    return path


def test_without_the_token_the_page_is_a_prompt_that_loads_and_reads_nothing(
        page, tmp_path, monkeypatch):
    from dashboard import common

    marker = tmp_path / "imported"
    probe = _marker_module(tmp_path / "probe.py", marker)
    monkeypatch.setattr(sys, "argv", [APP, "--model", f"{probe}:build"])  # operator's code
    scanned = []
    real_scan = common.checkpoint_catalogue
    monkeypatch.setattr(common, "checkpoint_catalogue",
                        lambda *a, **k: scanned.append(a) or real_scan(*a, **k))
    monkeypatch.setenv("VISTOOL_DASHBOARD_TOKEN", TOKEN)

    page.run()
    assert not page.exception
    assert [t.key for t in page.text_input] == ["token_prompt"]
    assert not page.tabs and not page.sidebar.children and not page.table
    assert not marker.exists() and not scanned  # no model imported, no catalogue read

    page.text_input(key="token_prompt").input("wrong")
    page.button[0].click().run()  # the form's submit button
    assert "not this dashboard's token" in _one_error(page)
    assert not page.tabs and not marker.exists() and not scanned

    page.text_input(key="token_prompt").input(TOKEN)
    page.button[0].click().run()  # the form's submit button
    assert not page.exception and not page.error, [e.value for e in page.error]
    assert len(page.tabs) == TABS and marker.exists() and scanned
    page.run()  # the session remembers the token
    assert len(page.tabs) == TABS


def test_the_token_in_the_url_opens_the_page(page, monkeypatch):
    monkeypatch.setenv("VISTOOL_DASHBOARD_TOKEN", TOKEN)
    page.query_params["token"] = TOKEN[:-1] + "X"
    page.run()
    assert "not this dashboard's token" in _one_error(page) and not page.tabs
    page.query_params["token"] = TOKEN
    page.run()
    assert not page.exception and not page.error
    assert len(page.tabs) == TABS and _classes(page) == set(SHAPE_CLASSES)
    assert page.text_input(key="model").value.endswith("runs/opened.safetensors")


def test_code_typed_into_the_model_box_is_refused_unless_allowed(page, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    _marker_module(tmp_path / "evil.py", marker)
    page.run()
    for spec in ("evil.py:build", f"{tmp_path}/evil.py:build", "evil:build"):
        page.text_input(key="model").input(spec).run()
        assert not page.exception
        message = _one_error(page)
        assert "Python code" in message and not page.tabs, spec
        assert not marker.exists(), spec

    monkeypatch.setenv("VISTOOL_DASHBOARD_ALLOW_CODE", "1")
    page.text_input(key="model").input("evil.py:build").run()
    assert not page.exception and not page.error
    assert marker.exists() and len(page.tabs) == TABS
    # the library's warning about the factory's weights, in the page's words
    notice = next(w.value for w in page.warning if "factory sets" in w.value)
    assert "a checkpoint file in the Weights box" in notice and not FLAG.search(notice)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_library_errors_name_the_pages_widgets(page):
    page.run()
    page.selectbox(key="device").select("cuda").run()
    message = _one_error(page)
    assert message.endswith("use the Device choice set to cpu"), message


def _escapes(tmp_path: Path, target: Path, name: str) -> list[str]:
    """A ``../`` path and a symlink under ``runs/``, both to ``target`` outside it."""
    link = tmp_path / "runs" / name
    link.symlink_to(target)
    return [f"runs/../{target.relative_to(tmp_path)}", str(link)]


def _refused(message: str, tmp_path: Path) -> None:
    assert "outside the folders this dashboard may read" in message
    assert str(tmp_path / "runs") in message and str(tmp_path / "cache") in message
    assert "allow-path" in message and "VISTOOL_DASHBOARD_ALLOW_PATHS" in message


def test_paths_outside_the_allowed_folders_are_refused_in_model_and_weights(page, tmp_path,
                                                                            monkeypatch):
    outside = tmp_path / "outside" / "m.safetensors"
    page.run()
    assert not page.error
    for spec in _escapes(tmp_path, outside, "link.safetensors"):
        page.text_input(key="model").input(spec).run()
        _refused(_one_error(page), tmp_path)
        assert not page.tabs, spec  # nothing was loaded from it
    page.text_input(key="model").input("shapes_cnn")
    for weights in ["runs/../outside/m.safetensors", str(tmp_path / "runs" / "link.safetensors"),
                    str(outside), "~/../../etc/passwd"]:
        page.text_input(key="weights").input(weights).run()
        _refused(_one_error(page), tmp_path)
        assert "Weights: weights file" not in " ".join(c.value for c in page.sidebar.caption)

    # a checkpoint under an allowed root loads: runs/, and a folder the operator allowed
    small_checkpoint(tmp_path / "runs" / "mine" / "m.safetensors", ["p", "q"], 32)
    page.text_input(key="model").input("runs/mine/../mine/m.safetensors")
    page.text_input(key="weights").input("default").run()
    assert not page.error and _classes(page) == {"p", "q"}
    monkeypatch.setenv("VISTOOL_DASHBOARD_ALLOW_PATHS", str(tmp_path / "outside"))
    page.text_input(key="model").input(str(tmp_path / "runs" / "link.safetensors")).run()
    assert not page.error and _classes(page) == {"out1", "out2"}


def test_image_and_masks_folders_outside_the_allowed_folders_are_refused(page, tmp_path):
    import numpy as np
    from PIL import Image

    for root in ("outside", "runs"):
        images = tmp_path / root / "imgs" / "circle"
        images.mkdir(parents=True)
        Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / "a.png")
    images = tmp_path / "outside" / "imgs" / "circle"
    page.run()
    for folder in _escapes(tmp_path, images.parent, "link"):
        page.text_input(key="eval_dataset").input(f"imagefolder:{folder}")
        page.slider(key="eval_limit").set_value(4)
        page.button(key="eval_run").click().run()
        assert not page.exception
        _refused(_one_error(page.tabs[6]), tmp_path)
        assert not [m for m in page.tabs[6].markdown if m.value.startswith("| method |")]
    page.text_input(key="eval_dataset").input("imagefolder:runs/link/../../runs/imgs")
    page.text_input(key="eval_masks").input("runs/../outside/imgs")
    page.button(key="eval_run").click().run()
    assert "the masks folder" in _one_error(page.tabs[6])


def test_the_catalogue_lists_only_checkpoints_inside_the_allowed_folders(page, tmp_path):
    small_checkpoint(tmp_path / "runs" / "good" / "best.safetensors", ["g"], 32)
    small_checkpoint(tmp_path / "outside" / "run" / "best.safetensors", ["o"], 32)
    (tmp_path / "runs" / "evil").symlink_to(tmp_path / "outside" / "run")
    page.run()
    options = page.selectbox(key="model_pick").options
    assert any("runs/good/best.safetensors" in o for o in options)
    assert not any("evil" in o or "outside" in o for o in options), options


class _Payload:
    """Unpickling this runs ``touch MARKER``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def pickled_payload(path: Path, marker: Path) -> Path:
    """A ``.pt`` file whose unpickling writes ``marker`` (checked live on a copy)."""
    torch.save({"weight": torch.zeros(2), "payload": _Payload(marker)}, path)
    check = marker.with_name(marker.name + "-live-check")
    torch.save({"payload": _Payload(check)}, path.with_name("check.pt"))
    with open(path.with_name("check.pt"), "rb"):
        torch.load(path.with_name("check.pt"), weights_only=False)  # the payload is real
    assert check.exists()
    return path


def test_a_pickled_payload_is_never_run(page, tmp_path):
    marker = tmp_path / "pwned"
    evil = pickled_payload(tmp_path / "runs" / "evil.pt", marker)
    page.run()
    page.text_input(key="model").input(str(evil)).run()
    assert "could not be loaded safely" in _one_error(page)
    page.text_input(key="model").input("shapes_cnn").run()
    page.text_input(key="weights").input("runs/evil.pt").run()
    assert "could not be loaded safely" in _one_error(page)
    assert not marker.exists()


def test_an_uploaded_pickle_is_saved_and_loaded_without_running_it(tmp_path, monkeypatch):
    """The upload handler of the sidebar (AppTest cannot upload; the browser test does)."""
    import streamlit as st

    from dashboard import common, security

    monkeypatch.setenv("VISTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    marker = tmp_path / "pwned"
    data = pickled_payload(tmp_path / "made.pt", marker).read_bytes()

    class Upload:
        name = "../../evil.pt"  # a hostile file name too

        def getvalue(self):
            return data

    state = {"checkpoint_upload": Upload()}
    monkeypatch.setattr(st, "session_state", state)
    saved = Path(common.save_uploaded_checkpoint(Upload()))
    assert saved.name == "evil.pt" and saved.read_bytes() == data
    security.check_model(str(saved), operator="shapes_cnn")  # its own upload: allowed
    with pytest.raises(security.AccessError):
        security.check_model(str(tmp_path / "made.pt"), operator="shapes_cnn")
    st.cache_resource.clear()
    with pytest.raises(Exception, match="could not be loaded safely"):
        common.get_model(str(saved), "default", "cpu", "")
    assert not marker.exists()


# --- messages: flags on the command line, widgets in the page -----------------------------

def _library_messages() -> list[str]:
    """The string parts of every error raised and warning given in the library (not the
    CLI), from its source."""
    found = []
    for path in (ROOT / "vistool").rglob("*.py"):
        if "cli" in path.relative_to(ROOT / "vistool").parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name.endswith(("Error", "Warning")) or name == "warn":
                    found += [n.value for arg in node.args for n in ast.walk(arg)
                              if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    return found


def test_library_messages_name_parameters_never_flags_and_every_face_can_say_them():
    from dashboard.common import page_message

    messages = _library_messages()
    assert len(messages) > 100
    flagged = [m for m in messages if FLAG.search(m) and "'vistool " not in m]
    assert not flagged, f"library messages that name CLI flags: {flagged}"
    named = {m["name"] for message in messages for m in PARAMETER.finditer(message)}
    assert {"weights", "device", "layer", "octaves", "octave_scale", "masks"} <= named
    options = {o for action in _every_option(build_parser()) for o in action.option_strings}
    for name in named:
        assert parameter_flag(name) in options, f"no CLI flag {parameter_flag(name)} for {name}"
        assert not FLAG.search(page_message(f"use `{name}=4` or `{name}`"))


def _every_option(parser):
    import argparse

    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _every_option(sub)


def test_the_faces_say_a_parameter_their_own_way():
    from dashboard.common import page_message

    message = ("use `octaves=4` or fewer, or `octave_scale=1.49` or less; or `device='cpu'`; "
               "pass `weights=FILE`, `weights='none'`; the `layer`; `spec='file.py:factory'`")
    assert cli_message(message) == (
        "use --octaves 4 or fewer, or --octave-scale 1.49 or less; or --device cpu; pass "
        "--weights FILE, --weights none; the --layer; --model file.py:factory")
    assert page_message(message) == (
        "use the Octaves slider set to 4 or fewer, or `octave_scale=1.49` or less; or the "
        "Device choice set to cpu; pass a checkpoint file in the Weights box (or upload a "
        "checkpoint), the Weights box set to none; the the layer chosen in the Layers tab; "
        "the Model box set to file.py:factory")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_the_cli_still_prints_flags_in_errors_and_warnings(capsys, tmp_path, monkeypatch):
    from vistool.cli import main

    assert main(["layers", "--model", "shapes_cnn", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("vistool: error: device 'cuda' requested but CUDA is not available; "
                       "use --device cpu")
    monkeypatch.chdir(tmp_path)
    _marker_module(tmp_path / "net.py", tmp_path / "imported")
    assert main(["layers", "--model", "net.py:build"]) == 0
    err = capsys.readouterr().err
    assert "pass --weights FILE" in err and "`" not in err, err


# --- the server ---------------------------------------------------------------------------

def _serve(tmp_path: Path, *args: str, env: dict | None = None):
    port = free_port()
    log = tmp_path / f"dashboard-{port}.log"
    environment = {**os.environ, "VISTOOL_CACHE": str(tmp_path / "cache"), **(env or {})}
    for name in ("STREAMLIT_SERVER_ADDRESS", "VISTOOL_DASHBOARD_TOKEN"):
        if name not in (env or {}):
            environment.pop(name, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vistool", "dashboard", "--headless",
                                 "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path,
                                env=environment)
    return proc, port, log


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads sockets in /proc")
def test_the_server_listens_on_loopback_unless_told_otherwise(tmp_path):
    tokens = []
    for args, expected in (((), {"127.0.0.1"}), (("--host", "0.0.0.0"), {"0.0.0.0"})):
        proc, port, log = _serve(tmp_path, *args)
        try:
            wait_until_healthy(proc, port, log)
            assert listening_addresses(proc.pid, port) == expected, log.read_text()
            line = start_line(log)
        finally:
            assert stop(proc) == 0, log.read_text()
        host = next(iter(expected))
        assert line.startswith(f"vistool dashboard: listening on {host}:{port} ")
        url = re.search(r"open (\S+)$", line).group(1)
        assert url.startswith(f"http://127.0.0.1:{port}/?token=")
        tokens.append(url.split("?token=")[1])
        assert "You can now view" not in log.read_text()  # Streamlit's URL has no token
    assert tokens[0] != tokens[1] and all(len(t) >= 32 for t in tokens)  # fresh per start


def test_the_token_comes_from_the_flag_or_the_environment_and_can_be_turned_off(monkeypatch):
    from vistool.cli.dashboard import access_token, start_line, url_of

    parse = build_parser().parse_args
    assert access_token(parse(["dashboard", "--token", "abc"])) == "abc"
    monkeypatch.setenv("VISTOOL_DASHBOARD_TOKEN", "from-env")
    assert access_token(parse(["dashboard"])) == "from-env"
    assert access_token(parse(["dashboard", "--no-token"])) is None
    monkeypatch.delenv("VISTOOL_DASHBOARD_TOKEN")
    assert access_token(parse(["dashboard"])) != access_token(parse(["dashboard"]))
    assert "NO token" in start_line("127.0.0.1", 9, None)
    assert start_line("127.0.0.1", 9, None).endswith("open http://127.0.0.1:9/")
    assert url_of("::", 9, "t") == "http://[::1]:9/?token=t"
    with pytest.raises(SystemExit):
        parse(["dashboard", "--token", "a", "--no-token"])


def test_the_server_passes_its_settings_to_the_app(tmp_path, monkeypatch):
    """``vistool dashboard`` runs Streamlit in this process: what it hands over is the
    environment and Streamlit's flags."""
    from streamlit.web import cli as streamlit_cli

    from vistool.cli import main

    calls = []
    monkeypatch.setattr(streamlit_cli, "main", lambda argv, **kw: calls.append(argv))
    _clear_settings(monkeypatch)
    (tmp_path / "data").mkdir()
    assert main(["dashboard", "--headless", "--token", "tok", "--allow-code",
                 "--allow-path", str(tmp_path / "data"), "--allow-path", str(tmp_path)]) == 0
    assert os.environ["VISTOOL_DASHBOARD_TOKEN"] == "tok"
    assert os.environ["VISTOOL_DASHBOARD_ALLOW_CODE"] == "1"
    assert os.environ["VISTOOL_DASHBOARD_ALLOW_PATHS"].split(os.pathsep) == [
        str((tmp_path / "data").resolve()), str(tmp_path.resolve())]
    flags = dict(zip(calls[0][2::2], calls[0][3::2]))
    assert flags["--server.address"] == "127.0.0.1"
    assert flags["--client.toolbarMode"] == "minimal"
    assert flags["--browser.gatherUsageStats"] == "false"
    assert flags["--server.headless"] == "true"
    assert flags["--server.maxUploadSize"] == "20"  # the app's limit, not Streamlit's 200 MB
    assert main(["dashboard", "--headless", "--no-token"]) == 0
    assert "VISTOOL_DASHBOARD_TOKEN" not in os.environ
    assert os.environ["VISTOOL_DASHBOARD_ALLOW_CODE"] == "0"
    assert main(["dashboard", "--allow-path", str(tmp_path / "nope")]) == 2


def test_dashboard_help_names_every_option(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["dashboard", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("--model", "--checkpoint", "--host", "--port", "--token", "--no-token",
                   "--allow-path", "--allow-code", "--headless", "127.0.0.1",
                   "VISTOOL_DASHBOARD_TOKEN"):
        assert option in text, option


def test_a_bare_pickle_is_refused_without_running_it(tmp_path):
    """The refusal reads the pickle's opcodes only (pickletools), it never builds objects."""
    from vistool.core.checkpoint import load_checkpoint
    from vistool.core.errors import CheckpointError

    marker = tmp_path / "pwned"
    path = tmp_path / "raw.pt"
    path.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not marker.exists()
