"""Style transfer (Gatys et al.) of the current image on VGG19, with live progress."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch

import vistool
from dashboard.common import (
    SAMPLES,
    Session,
    check_upload,
    get_model,
    png_bytes,
    progress_reporter,
    tab,
)
from vistool.core.imageio import load_tensor
from vistool.drawing import to_uint8_hwc


def vgg19_weights() -> str:
    """``default`` when torchvision's ImageNet VGG19 weights are cached, else ``none``."""
    from torchvision.models import VGG19_Weights

    name = Path(VGG19_Weights.DEFAULT.url).name
    return "default" if (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file() else "none"


@tab
def render(session: Session) -> None:
    upload = st.file_uploader("Style image", key="style_upload",
                              type=["jpg", "jpeg", "png", "webp", "bmp"])
    style = check_upload(upload) if upload else SAMPLES / "brick.jpg"
    st.image(vistool.load_image(style), caption="style", width=160)
    a, b, c = st.columns(3)
    size = a.select_slider("Size", [128, 192, 256, 384, 512], value=128, key="style_size")
    steps = b.slider("Steps (L-BFGS evaluations)", 10, 300, 40, key="style_steps")
    weight = c.select_slider("Style weight", [1e4, 1e5, 1e6, 1e7], value=1e6,
                             key="style_weight")
    weights = vgg19_weights()
    if weights == "none":
        st.warning("VGG19's ImageNet weights are not in the torch hub cache: the style "
                   "network has **random weights** and the picture shows an untrained net.")
    run, stop = st.columns(2)
    stop.button("Stop", key="style_stop")
    if run.button("Stylise", key="style_run", type="primary"):
        vgg, _, lock = get_model("vgg19", weights, str(session.loaded.device), "")
        content = load_tensor(session.image, size).to(vgg.device)
        styled = load_tensor(style, size).to(vgg.device)
        preview = st.empty()
        with lock:
            result = vistool.style_transfer(vgg, content, [styled], style_weight=weight,
                                            steps=steps,
                                            progress=progress_reporter("stylising", preview))
        st.session_state["style_result"] = (session.digest, to_uint8_hwc(result.image[0]))
    stored = st.session_state.get("style_result")
    if stored and stored[0] == session.digest:
        st.image(stored[1], caption="stylised")
        st.download_button("PNG", png_bytes(stored[1]), "style.png", "image/png",
                           key="style_png")
