"""vistool dashboard: explore a model layer by layer.

Run with ``vistool dashboard`` (or ``streamlit run dashboard/app.py``). Every computation
is a call into the ``vistool`` library; this file only lays out widgets and pictures.
"""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

import vistool
from vistool.data.shapes import SHAPE_CLASSES, render_scene
from vistool.explainers.activations import channel_stats
from vistool.render import channel_grid, enlarge, overlay, to_uint8_hwc


@st.cache_resource(show_spinner="loading model …")
def get_model(spec: str, weights: str, device: str) -> vistool.LoadedModel:
    return vistool.load_model(spec, weights=weights, device=device)


def sample_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return render_scene(rng, 128, [int(rng.integers(len(SHAPE_CLASSES)))]).image


def main() -> None:
    st.set_page_config(page_title="vistool", layout="wide")
    st.title("vistool")
    with st.sidebar:
        spec = st.text_input("Model", value="shapes_cnn", key="model",
                             help="torchvision name, book model, checkpoint or file.py:factory")
        weights = st.text_input("Weights", value="default", key="weights",
                                help="default, none, or a state-dict file")
        device = st.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="device")
        upload = st.file_uploader("Image", type=sorted(e.strip(".") for e in
                                                       vistool.core.imageio.IMAGE_EXTENSIONS))
        seed = st.number_input("Sample seed (without an upload)", value=0, step=1, key="seed")
    try:
        loaded = get_model(spec, weights, device)
        image = vistool.load_image(upload.getvalue() if upload else sample_image(int(seed)))
        batch = loaded.preprocess(image)
    except vistool.VistoolError as exc:
        st.error(str(exc))
        return

    with torch.no_grad():
        logits = loaded.model(batch)
    probs = logits.softmax(1)[0]
    top = probs.topk(min(5, probs.numel()))
    col_image, col_pred = st.columns([1, 2])
    col_image.image(image, caption="input", width="stretch")
    col_pred.table({"class": [loaded.class_name(int(i)) or int(i) for i in top.indices],
                    "probability": [round(float(p), 4) for p in top.values]})

    tab_layers, tab_acts, tab_cam = st.tabs(["Layers", "Activations", "Class activation map"])
    with tab_layers:
        st.dataframe([row.to_dict() for row in loaded.layers], width="stretch")
    with tab_acts:
        names = [row.name for row in loaded.layers if row.output_shape is not None]
        layer = st.selectbox("Layer", names, index=names.index(loaded.default_layer),
                             key="layer")
        normalization = st.radio("Normalisation", ["channel", "layer"], horizontal=True,
                                 key="normalization")
        act = vistool.activations(loaded, batch, layer).layers[layer][0]
        count = act.shape[0]
        shown = st.slider("Channels", 0, count - 1, (0, min(count, 64) - 1), key="channels")
        channels = list(range(shown[0], shown[1] + 1))
        grid = channel_grid(act, channels, normalization=normalization)
        st.image(to_uint8_hwc(grid), caption=f"{layer}: {tuple(act.shape)}")
        stats = channel_stats(act)
        st.dataframe({"channel": channels,
                      **{k: v[channels].tolist() for k, v in stats.items()}})
    with tab_cam:
        spatial = [row.name for row in loaded.layers
                   if row.output_shape is not None and len(row.output_shape) == 4]
        method = st.selectbox("Method", vistool.CAM_METHODS, index=1, key="cam_method")
        cam_layer = st.selectbox("Layer", spatial, index=spatial.index(loaded.default_layer),
                                 key="cam_layer")
        options = [int(i) for i in top.indices]
        target = st.selectbox("Class", options, key="cam_target",
                              format_func=lambda i: f"{i}: {loaded.class_name(i) or ''}")
        try:
            result = vistool.explain(loaded, batch, method, targets=target, layer=cam_layer,
                                     channels=32)
        except vistool.VistoolError as exc:
            st.error(str(exc))
            return
        view = vistool.deprocess(batch, loaded.mean, loaded.std)[0]
        st.image(to_uint8_hwc(enlarge(overlay(view, result.maps[0]))),
                 caption=f"{method} · {cam_layer} · class {target}"
                         f"{' (closed form)' if result.closed_form else ''}")


main()
