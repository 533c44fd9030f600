"""The Streamlit dashboard: the app driven headless with streamlit's AppTest, and the
``vistool dashboard`` server started, stopped by a signal and checked for leftovers."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from dashboard_helpers import free_port, small_checkpoint, wait_until_healthy

from vistool.cli import main as vistool
from vistool.core.checkpoint import save_checkpoint
from vistool.core.errors import RandomWeightsWarning
from vistool.core.registry import get_model, model_defaults
from vistool.data.shapes import SHAPE_CLASSES

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")




@pytest.fixture
def app(tmp_path, monkeypatch):
    """The app, with an empty vistool cache, no runs/ folder and no cached models, without a
    token and allowed to read the test's folder (tests/test_dashboard_security.py checks the
    refusals)."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("VISTOOL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VISTOOL_DASHBOARD_TOKEN", raising=False)
    monkeypatch.delenv("VISTOOL_DASHBOARD_ALLOW_CODE", raising=False)
    monkeypatch.setenv("VISTOOL_DASHBOARD_ALLOW_PATHS", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    st.cache_resource.clear()
    st.cache_data.clear()
    return AppTest.from_file(APP, default_timeout=120)


def _main_warnings(app) -> list[str]:
    """The page's warnings but the Style tab's notice about VGG19's weights."""
    return [w.value for w in app.warning if "VGG19" not in w.value]


def _captions(app, tab: int | None = None) -> list[str]:
    where = app if tab is None else app.tabs[tab]
    return [img.proto.imgs[0].caption for img in where.get("image")]


TABS = ["Layers", "Activations", "Filters", "Class activation maps", "DeepDream",
        "Style transfer", "Evaluate"]


@pytest.fixture
def small(app, tmp_path):
    """The app on a small random shapes_cnn checkpoint (the shapes classes) at 32²."""
    path = small_checkpoint(tmp_path / "m.safetensors", list(SHAPE_CLASSES), size=32)
    app.run()
    app.text_input(key="model").input(str(path)).run()
    assert not app.exception and not app.error
    return app


def test_every_tab_renders_and_the_prediction_is_always_visible(small):
    app = small
    assert [t.label for t in app.tabs] == TABS
    assert set(app.table[0].value["class"]) == set(SHAPE_CLASSES)
    captions = _captions(app)
    assert captions[0] == "input"
    assert "features: channels 0–15" in captions
    assert any(c.startswith("features channel ") for c in captions)
    assert any(c.startswith("the strongest channel of each layer: features") for c in captions)
    assert [c for c in _captions(app, 3) if c != "raw map"] == [
        "gradcam (closed form)", "gradcam++ (closed form)", "layercam (closed form)"]
    assert len(app.tabs[3].get("download_button")) == 6  # PNG and .npy per method


def test_the_layer_chosen_in_the_layers_tab_is_every_tabs(small):
    app = small
    app.text_input(key="layer_filter").input("conv").run()
    shown = app.dataframe[0].value
    assert set(shown["type"]) == {"Conv2d"}
    assert app.selectbox(key="layer").options == list(shown["name"])
    app.selectbox(key="layer").select("features.4").run()
    assert not app.exception and not app.error
    assert "features.4: channels 0–7" in _captions(app, 1)
    for tab in (1, 2, 3, 4):
        assert "**features.4**" in " ".join(c.value for c in app.tabs[tab].caption), tab
    assert _captions(app, 3)[0] == "gradcam"  # not the GAP layer: no closed form


def test_activation_widgets_update_their_views(small):
    app = small
    app.slider(key="channel").set_value(2).run()
    assert "features channel 2" in _captions(app, 1)
    app.slider(key="channels").set_value((1, 2)).run()
    assert "features: channels 1–2" in _captions(app, 1)
    stats = app.tabs[1].dataframe[0].value
    assert list(stats["mean"]) == sorted(stats["mean"], reverse=True)
    assert sorted(stats["channel"]) == list(range(16))


def test_cam_methods_class_and_errors(small):
    app = small
    app.multiselect(key="cam_methods").set_value(["gradcam", "cam", "scorecam"]).run()
    app.selectbox(key="cam_class").select(2).run()
    assert not app.exception
    assert app.selectbox(key="cam_class").value == 2
    assert not [m for m in app.tabs[3].markdown if "deletion AUC" in m.value]  # opt-in
    app.toggle(key="cam_scores").set_value(True).run()
    notes = [m.value for m in app.tabs[3].markdown if "deletion AUC" in m.value]
    assert len(notes) == 3 and all("insertion AUC" in n for n in notes)
    app.selectbox(key="layer").select("features.4").run()
    errors = [e.value for e in app.tabs[3].error]
    assert len(errors) == 1 and "not followed by global average pooling" in errors[0]
    assert _captions(app, 3)[0] == "gradcam"  # the other methods still show


def test_cam_smoothing_toggles_change_the_maps_they_apply_to(small):
    app = small
    app.multiselect(key="cam_methods").set_value(["gradcam", "eigencam"]).run()

    def urls():
        return [img.proto.imgs[0].url for img in app.tabs[3].get("image")]

    plain = urls()
    app.toggle(key="cam_eigen_smooth").set_value(True).run()
    assert not app.exception and not app.tabs[3].error
    eigen = urls()
    assert eigen[:2] != plain[:2] and eigen[2:] == plain[2:]  # gradcam changed, eigencam not
    assert "eigen smoothing does not apply to eigencam" in [c.value for c in
                                                           app.tabs[3].caption]
    app.toggle(key="cam_aug_smooth").set_value(True).run()
    assert not app.exception and not app.tabs[3].error
    assert urls()[2:] != plain[2:]  # augmentation smoothing applies to every method


def test_cam_method_options_and_fusion_change_the_maps(small):
    app = small
    app.multiselect(key="cam_methods").set_value(["fem", "gradcam"]).run()

    def urls():
        return [img.proto.imgs[0].url for img in app.tabs[3].get("image")]

    plain = urls()
    app.number_input(key="cam_option_fem_k").set_value(0.5).run()
    assert not app.exception and not app.tabs[3].error
    changed = urls()
    assert changed[:2] != plain[:2] and changed[2:] == plain[2:]  # fem's maps, not gradcam's
    app.multiselect(key="cam_fuse_layers").set_value(["features.4"]).run()
    assert not app.exception and not app.tabs[3].error
    mean = urls()
    assert mean[2] != changed[2] and mean[3] != changed[3]  # the fused map, overlaid and bare
    app.selectbox(key="cam_fusion").select("product").run()
    assert urls()[2] != mean[2]
    app.multiselect(key="cam_fuse_layers").set_value([]).run()
    app.multiselect(key="cam_methods").set_value(["dff"]).run()
    assert not app.exception and not app.tabs[3].error
    assert "dff concepts, one colour each" in _captions(app, 3)
    legend = next(c.value for c in app.tabs[3].caption if c.value.startswith("#"))
    assert legend.count("#") == 5 and all(name in SHAPE_CLASSES for name in
                                          re.findall(r"#[0-9a-f]{6}: (\w+)", legend))
    app.multiselect(key="cam_methods").set_value(["sess"]).run()
    app.text_input(key="cam_option_sess_base").input("nocam").run()
    errors = [e.value for e in app.tabs[3].error]
    assert errors == ["sess's option base must be another CAM method, not 'nocam' ('vistool "
                      "methods' lists them)"]


def test_filters_tab_renders_any_objective_and_names_a_bad_one(small):
    app = small
    app.text_input(key="fv_objective").input("features:1 - 0.5*diversity(features)").run()
    app.slider(key="fv_batch").set_value(2)
    app.select_slider(key="fv_steps").set_value(32)
    app.button(key="fv_objective_run").click().run()
    assert not app.exception and not app.tabs[2].error
    assert "channel(features, 1) - diversity(features) * 0.5" in _captions(app, 2)
    app.text_input(key="fv_objective").input("direction(features, /etc/hostname)").run()
    app.button(key="fv_objective_run").click().run()
    assert next(e.value for e in app.tabs[2].error).startswith(
        "objective 'direction(features, /etc/hostname)': direction(...) reads a vector from a "
        "file, which is not allowed here")  # a visitor's text reads no file of the server
    app.text_input(key="fv_objective").input("features:1 +").run()
    app.button(key="fv_objective_run").click().run()
    assert [e.value for e in app.tabs[2].error] == [
        "objective 'features:1 +': it ends too early; write LAYER:CHANNEL[:neuron], "
        "logit:CLASS or a function (channel, neuron, logit, deepdream, diversity, l1, l2, "
        "total_variation, blur, direction), with + - * and numbers"]


def test_filters_tab_finds_dataset_examples_in_a_dataset_or_an_allowed_folder(small):
    app = small
    app.multiselect(key="fv_channels").set_value([0, 3])
    app.select_slider(key="fv_steps").set_value(32)
    app.button(key="fv_run").click().run()
    app.text_input(key="fv_examples_source").input("shapes:40").run()
    app.button(key="fv_examples_run").click().run()
    assert not app.exception and not app.tabs[2].error
    captions = _captions(app, 2)
    assert "channel 0: its top 6 of 40 images" in captions
    assert "channel 3: its top 6 of 40 images" in captions
    app.text_input(key="fv_examples_source").input("/etc").run()
    app.button(key="fv_examples_run").click().run()
    assert "outside the folders this dashboard may read" in app.tabs[2].error[0].value


def test_long_work_tabs_run_with_progress_and_downloads(small):
    app = small
    app.multiselect(key="fv_channels").set_value([0, 3])
    app.select_slider(key="fv_steps").set_value(32)
    app.button(key="fv_run").click().run()
    assert _captions(app, 2)[:4] == ["channel 0", "its activation here", "channel 3",
                                     "its activation here"]
    assert _progress(app, 2) == [(100, "rendering: 32/32")]  # the bar went to its end
    app.slider(key="dream_octaves").set_value(2)
    app.slider(key="dream_steps").set_value(2)
    app.button(key="dream_run").click().run()
    assert "deepdream · features" in _captions(app, 4)
    assert _progress(app, 4) == [(100, "dreaming: 4/4")]  # 2 octaves of 2 steps
    assert "step 4" in _captions(app, 4)  # the live preview's last image
    app.select_slider(key="style_size").set_value(128)
    app.slider(key="style_steps").set_value(10)
    app.button(key="style_run").click().run()
    assert "stylised" in _captions(app, 5)
    assert _progress(app, 5) == [(100, "stylising: 10/10")]
    app.slider(key="eval_limit").set_value(4)
    app.multiselect(key="eval_methods").set_value(["gradcam", "random"])
    app.button(key="eval_run").click().run()
    assert not app.exception and not app.error
    table = [m.value for m in app.tabs[6].markdown if m.value.startswith("| method |")]
    assert len(table) == 1 and "| gradcam |" in table[0] and "| random |" in table[0]
    assert "mean curves per method" in _captions(app, 6)
    assert len(app.tabs[4].get("download_button")) == 1
    assert len(app.tabs[5].get("download_button")) == 1


def _progress(app, tab: int) -> list[tuple[int, str]]:
    """The tab's progress bars as (percent, text)."""
    return [(bar.proto.value, bar.proto.text) for bar in app.tabs[tab].get("progress")]


def _decoded(app) -> list[str]:
    """The media URL of the Generative tab's picture decoded from the sliders (a digest of
    its bytes)."""
    return [img.proto.imgs[0].url for img in app.tabs[1].get("image")
            if img.proto.imgs[0].caption == "decoded from the sliders' code"]


def test_a_trained_checkpoint_explains_its_own_image(app, trained_shapes, tmp_path,
                                                     monkeypatch):
    monkeypatch.setenv("VISTOOL_DASHBOARD_ALLOW_PATHS",
                       os.pathsep.join([str(tmp_path), str(trained_shapes[0].parent)]))
    app.run()
    app.text_input(key="model").input(str(trained_shapes[0])).run()
    app.selectbox(key="source").select("shapes").run()
    assert not app.exception and not app.error and not _main_warnings(app)
    top = app.table[0].value
    assert float(top["probability"].iloc[0]) > 0.5
    app.button(key="eval_run").click().run()
    table = next(m.value for m in app.tabs[6].markdown if m.value.startswith("| method |"))
    gradcam = next(line for line in table.splitlines() if line.startswith("| gradcam |"))
    assert gradcam.split("|")[2].strip().startswith("1.000")  # pointing game on 16 images


def test_the_generative_tab_for_a_vae_and_a_gan(app, tmp_path):
    for arch in ("vae", "dcgan"):
        torch.manual_seed(0)
        path = tmp_path / f"{arch}.safetensors"
        inputs = (model_defaults(arch) if arch == "vae" else  # a GAN's input is its code
                  {"input_size": [64, 1, 1], "mean": [0.0] * 64, "std": [1.0] * 64})
        save_checkpoint(path, get_model(arch), {"arch": arch, "arch_kwargs": {}, **inputs})
        app.run()
        app.text_input(key="model").input(str(path)).run()
        assert not app.exception and not app.error, arch
        assert [t.label for t in app.tabs] == ["Layers", "Generative"]
        captions = _captions(app, 1)
        assert "interpolation between two codes" in captions
        assert "samples from the prior N(0, I)" in captions
        assert ("digits (top) and their reconstructions (bottom)" in captions) == (arch == "vae")
        start, before = app.slider(key="gen_z0").value, _decoded(app)
        assert len(before) == 1, arch
        app.slider(key="gen_z0").set_value(2.5).run()
        assert not app.exception
        assert _decoded(app) != before, arch  # the slider's code decodes to another picture
        app.slider(key="gen_z0").set_value(start).run()
        assert _decoded(app) == before, arch  # and back


def test_a_corrupt_image_and_a_wrong_checkpoint_are_one_line_errors(small, monkeypatch,
                                                                     tmp_path):
    from dashboard import common

    app = small
    monkeypatch.setattr(common, "sample_image", lambda source, seed: b"not an image")
    app.number_input(key="seed").set_value(3).run()
    assert not app.exception
    assert "cannot" in app.error[0].value.lower() or "image" in app.error[0].value.lower()
    monkeypatch.undo()
    other = small_checkpoint(tmp_path / "other.safetensors", ["a", "b"], size=32)
    app.text_input(key="model").input("resnet18").run()
    app.text_input(key="weights").input(str(other)).run()
    assert not app.exception
    assert len(app.error) == 1 and "\n" not in app.error[0].value
    assert not re.search(r"--[a-z]", app.error[0].value)  # the page's words, not the CLI's


def test_upload_size_is_limited(monkeypatch):
    from dashboard import common
    from vistool.core.errors import VistoolError

    class Upload:
        name = "big.png"

        def getvalue(self):
            return b"0" * (2 * 1024 * 1024)

    monkeypatch.setattr(common, "MAX_UPLOAD_MB", 1.0)
    with pytest.raises(VistoolError, match=re.escape("big.png is 2.0 MB; the dashboard takes "
                                                     "uploads up to 1 MB")):
        common.check_upload(Upload())


def test_no_hook_is_left_and_the_model_keeps_its_state(small):
    from dashboard import common

    app = small
    app.button(key="fv_run").click().run()
    app.selectbox(key="cam_class").select(1).run()
    spec = app.text_input(key="model").value
    loaded, _, _ = common.get_model(spec, "default", "auto", "")
    for module in loaded.model.modules():
        assert not module._forward_hooks and not module._forward_pre_hooks
        assert not module._backward_hooks
        assert not module.training
    assert all(p.grad is None for p in loaded.model.parameters())


def test_picking_a_trained_checkpoint_from_the_catalogue(app, tmp_path):
    runs = small_checkpoint(tmp_path / "runs" / "mine" / "best.safetensors", ["p", "q"], size=32)
    app.run()
    label = next(o for o in app.selectbox(key="model_pick").options if str(runs) in o
                 or "runs/mine" in o)
    app.selectbox(key="model_pick").select(label).run()
    assert app.text_input(key="model").value.endswith("runs/mine/best.safetensors")
    assert set(app.table[0].value["class"]) == {"p", "q"}


def test_dashboard_reports_bad_model_in_one_line(app):
    app.run()
    app.text_input(key="model").input("resnet81").run()
    assert not app.exception
    assert "did you mean 'resnet18'" in app.error[0].value
    assert not re.search(r"--[a-z]", app.error[0].value)


def test_dashboard_opens_on_the_cached_trained_demo_model(app, tmp_path):
    cached = small_checkpoint(tmp_path / "cache" / "shapes-cnn-v3" / "best.safetensors",
                         ["alpha", "beta", "gamma"])
    app.run()
    assert not app.exception
    assert not app.error
    assert not _main_warnings(app)
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
    assert len(_main_warnings(app)) == 1
    notice = _main_warnings(app)[0]
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
    path = str(small_checkpoint(tmp_path / "m.safetensors", ["yes", "no"], size=32))
    monkeypatch.setattr(sys, "argv", [APP, *(path if a == "M" else a for a in args)])
    app.run()
    assert not app.exception
    assert not app.error
    assert (app.text_input(key="model").value, app.text_input(key="weights").value) == tuple(
        path if f == "M" else f for f in fields)
    assert set(app.table[0].value["class"]) == {"yes", "no"}
    assert _main_warnings(app) == (
        ["ignored dashboard arguments '--colour red'; it takes --model M and --checkpoint F"]
        if "--colour" in args else [])


def test_dashboard_command_refuses_a_missing_checkpoint_before_serving(capsys):
    assert vistool(["dashboard", "--checkpoint", "missing.safetensors"]) == 2
    assert "checkpoint 'missing.safetensors' does not exist" in capsys.readouterr().err








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
    port = free_port()
    log = tmp_path / "dashboard.log"
    env = {**os.environ, "VISTOOL_CACHE": str(tmp_path / "cache"),
           "STREAMLIT_SERVER_ADDRESS": "127.0.0.1"}  # loopback only
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vistool", "dashboard", "--headless", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)
    try:
        wait_until_healthy(proc, port, log)
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
