"""Results show themselves in a notebook: ``_repr_png_`` of every result draws the picture a
user wants (the overlays, the grid, the image), and ``vistool.overlay`` / ``vistool.show``
are public."""

from __future__ import annotations

import io
import sys
import types

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

import vistool
from vistool.drawing import apply_colormap, channel_grid, image_grid, to_uint8_hwc

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def loaded():
    return vistool.load_model("shapes_cnn", weights="none", device="cpu", input_size=32,
                              seed=0)


@pytest.fixture(scope="module")
def pictures():
    """Two images (2, 3, 32, 32) in [0, 1]."""
    torch.manual_seed(0)
    return torch.rand(2, 3, 32, 32)


def normalised(loaded, pictures):
    mean = torch.tensor(loaded.mean).view(-1, 1, 1)
    std = torch.tensor(loaded.std).view(-1, 1, 1)
    return (pictures - mean) / std


def png(result) -> np.ndarray:
    data = result._repr_png_()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_cam_shows_each_image_with_its_map(loaded, pictures):
    batch = normalised(loaded, pictures)
    result = vistool.explain(loaded, batch, "gradcam", layer="features.3")
    assert torch.allclose(result.inputs, pictures, atol=1e-5)
    shown = png(result)
    assert shown.shape == (2 * 34 + 2, 34 + 2, 3)  # one row per image, 2-pixel padding
    for i in range(2):
        expected = vistool.overlay(to_uint8_hwc(pictures[i]), result.maps[i].numpy())
        tile = shown[2 + 34 * i:2 + 34 * i + 32, 2:34].astype(int)
        assert np.abs(tile - expected).max() <= 1  # the public overlay, up to rounding
    top2 = vistool.explain(loaded, batch, "gradcam", layer="features.3", topk=2)
    assert png(top2).shape == (70, 70, 3)  # one column per target
    bare = vistool.explain(loaded.model, batch, "gradcam", layer="features.3")
    assert bare.inputs is None
    assert np.array_equal(png(bare), to_uint8_hwc(image_grid(apply_colormap(
        bare.maps[:, None], "jet").flatten(0, 1), cols=1)))  # the maps alone


def test_activations_attributions_filters_dreams_and_styles_show_their_pictures(loaded,
                                                                                 pictures):
    batch = normalised(loaded, pictures)
    acts = vistool.activations(loaded, batch, ["features.3", "features.0"])
    first = acts.layers["features.3"][0]
    assert np.array_equal(png(acts), to_uint8_hwc(channel_grid(first[:64])))
    att = vistool.attribute(loaded, batch, "saliency")
    assert np.array_equal(png(att), to_uint8_hwc(image_grid(apply_colormap(att.maps, "jet"))))
    viz = vistool.render_filters(loaded, "features.3", channels=[0, 1, 2], size=16, steps=2)
    assert png(viz).shape == (2 * 18 + 2, 2 * 18 + 2, 3)  # three 16² images, two columns
    assert np.array_equal(png(viz), to_uint8_hwc(image_grid(viz.images)))
    dream = vistool.deepdream(loaded, pictures[:1], "features.3", octaves=1, steps=1)
    assert np.array_equal(png(dream), to_uint8_hwc(image_grid(dream.images)))
    style = vistool.style_transfer(loaded, pictures[:1], [pictures[1:]], steps=1,
                                   content_layers=["features.3"], style_layers=["features.3"],
                                   optimizer="adam")
    assert np.array_equal(png(style), to_uint8_hwc(style.image[0]))


def test_overlay_takes_arrays_as_show_cam_on_image_does():
    image = np.zeros((8, 10, 3), np.float32)
    image[..., 0] = 1.0  # red
    heat = np.zeros((4, 5), np.float32)  # another size: resized to the image's
    blended = vistool.overlay(image, heat, alpha=0.5, colormap="jet")
    assert blended.dtype == np.uint8 and blended.shape == (8, 10, 3)
    blue = to_uint8_hwc(apply_colormap(torch.zeros(1, 1), "jet"))[0, 0]  # jet(0): dark blue
    assert np.abs(blended[0, 0].astype(int) - (0.5 * np.array([255, 0, 0]) + 0.5 * blue)
                  ).max() <= 1
    as_uint8 = vistool.overlay((image * 255).astype(np.uint8), heat)
    assert np.array_equal(as_uint8, blended)
    as_tensor = vistool.overlay(torch.from_numpy(image).permute(2, 0, 1), torch.zeros(8, 10))
    assert as_tensor.shape == (3, 8, 10)
    with pytest.raises(vistool.VistoolError, match=r"expected an image \(3, H, W\)"):
        vistool.overlay(np.zeros((2, 3, 4, 5)), heat)


def test_show_displays_inline_in_a_notebook_and_in_matplotlib_elsewhere(loaded, pictures,
                                                                       monkeypatch):
    result = vistool.explain(loaded, normalised(loaded, pictures), "gradcam",
                             layer="features.3")
    shown = []
    ipython = types.ModuleType("IPython")
    ipython.version_info = (8, 30)  # what matplotlib reads
    ipython.get_ipython = lambda: object()  # a running kernel
    display = types.ModuleType("IPython.display")
    display.Image = lambda data: ("png", data)
    display.display = shown.append
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display)
    vistool.show(result)
    assert shown == [("png", result._repr_png_())]

    ipython.get_ipython = lambda: None  # IPython installed, no notebook: matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vistool.show(pictures[0], title="first")
    axes = plt.gcf().axes[0]
    assert axes.get_title() == "first"
    assert np.array_equal(axes.images[0].get_array(), to_uint8_hwc(pictures[0]))
    plt.close("all")
