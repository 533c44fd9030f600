"""The Streamlit dashboard, driven headless with streamlit's AppTest."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainers.models import get_model
from vistool.core.checkpoint import save_checkpoint

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")


@pytest.fixture
def app():
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(APP, default_timeout=120)


def test_dashboard_shows_layers_activations_and_predictions(app, tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, get_model("shapes_cnn", num_classes=2, width=4),
                    {"arch": "shapes_cnn", "arch_kwargs": {"num_classes": 2, "width": 4},
                     "classes": ["yes", "no"], "input_size": [3, 32, 32]})
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
