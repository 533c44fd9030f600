"""vistool dashboard: explore a model layer by layer.

Run with ``vistool dashboard [--model M] [--checkpoint F]`` or
``streamlit run dashboard/app.py [-- [--model M] [--checkpoint F]]``. The sidebar opens on
``--model`` (default ``shapes_cnn``, whose default weights are the newest trained checkpoint
that ``make demo`` or ``vistool train shapes-cnn`` wrote; without one the page warns that the
weights are random). ``--checkpoint F`` alone opens that trainers checkpoint; with ``--model``
it gives that model's weights. Every computation is a call into the ``vistool`` library; this
file only lays out widgets and pictures.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import streamlit as st
import torch

import vistool
from vistool.core.cache import trained_checkpoints
from vistool.core.errors import RandomWeightsWarning, VistoolWarning
from vistool.data.shapes import SHAPE_CLASSES, render_scene
from vistool.explainers.activations import channel_stats
from vistool.render import channel_grid, enlarge, overlay, to_uint8_hwc

DEFAULT_MODEL = "shapes_cnn"
RANDOM_NOTICE = ("**The weights are random** ({weights}): the predictions and maps below show "
                 "an untrained network. For a trained shapes_cnn run `make demo` (it caches one) "
                 "or `vistool train shapes-cnn` and rerun this page, or enter a checkpoint file "
                 "as the model.")


def preset(argv: list[str]) -> tuple[str, str, list[str]]:
    """The model and weights the sidebar opens on, from the script arguments
    ``--model M --checkpoint F``, and the arguments not understood."""
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    parser.add_argument("--model")
    parser.add_argument("--checkpoint")
    try:
        args, unknown = parser.parse_known_args(argv)
    except argparse.ArgumentError:
        args, unknown = parser.parse_known_args([]), argv
    if args.checkpoint and not args.model:
        return args.checkpoint, "default", unknown
    return args.model or DEFAULT_MODEL, args.checkpoint or "default", unknown


def script_arguments() -> list[str]:
    """``sys.argv[1:]`` when Streamlit runs this file as the script (``streamlit run`` sets
    ``sys.argv``), else nothing (an in-process ``AppTest`` leaves the caller's)."""
    running_this = sys.argv and Path(sys.argv[0]).resolve() == Path(__file__).resolve()
    return sys.argv[1:] if running_this else []


def newest_checkpoint(spec: str, weights: str) -> str:
    """The trained checkpoint a book model name with default weights resolves to now, with
    its time: part of the model cache key, so one trained while the page is open is used."""
    found = trained_checkpoints(spec) if weights == "default" else []
    return f"{found[0]}@{found[0].stat().st_mtime_ns}" if found else ""


@st.cache_resource(show_spinner="loading model …")
def get_model(spec: str, weights: str, device: str,
              newest: str) -> tuple[vistool.LoadedModel, list[str]]:
    """The loaded model and what vistool warned about it, for the page rather than the
    console (random weights are shown from ``LoadedModel.random_weights`` instead).
    ``newest`` (see :func:`newest_checkpoint`) is only part of the cache key."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VistoolWarning)
        loaded = vistool.load_model(spec, weights=weights, device=device)
    notices = []
    for warning in caught:
        if not issubclass(warning.category, VistoolWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
        elif not (loaded.random_weights and issubclass(warning.category, RandomWeightsWarning)):
            notices.append(str(warning.message))
    return loaded, notices


def sample_image(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return render_scene(rng, 128, [int(rng.integers(len(SHAPE_CLASSES)))]).image


def sidebar(model: str, weights: str) -> tuple[str, str, str, object, int]:
    """The sidebar widgets: model, weights, device, uploaded image and sample seed."""
    with st.sidebar:
        spec = st.text_input("Model", value=model, key="model",
                             help="torchvision name, book model, checkpoint or file.py:factory")
        weights = st.text_input("Weights", value=weights, key="weights",
                                help="default, none, or a state-dict file")
        device = st.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="device")
        upload = st.file_uploader("Image", type=sorted(e.strip(".") for e in
                                                       vistool.core.imageio.IMAGE_EXTENSIONS))
        seed = st.number_input("Sample seed (without an upload)", value=0, step=1, key="seed")
    return spec, weights, device, upload, int(seed)


def show_weights(loaded: vistool.LoadedModel, notices: list[str]) -> None:
    """Where the weights came from (sidebar) and, prominently, when they are random."""
    st.sidebar.caption(f"Weights: {loaded.weights}")
    if loaded.random_weights:
        st.warning(RANDOM_NOTICE.format(weights=loaded.weights), icon="⚠️")
    for notice in notices:
        st.warning(notice)


def predictions(loaded: vistool.LoadedModel, image: np.ndarray,
                batch: torch.Tensor) -> list[int]:
    """The input beside its top-5 classes; returns their indices, best first."""
    with torch.no_grad():
        probs = loaded.model(batch).softmax(1)[0]
    top = probs.topk(min(5, probs.numel()))
    col_image, col_pred = st.columns([1, 2])
    col_image.image(image, caption="input", width="stretch")
    col_pred.table({"class": [loaded.class_name(int(i)) or int(i) for i in top.indices],
                    "probability": [round(float(p), 4) for p in top.values]})
    return [int(i) for i in top.indices]


def layers_tab(loaded: vistool.LoadedModel) -> None:
    st.dataframe([row.to_dict() for row in loaded.layers], width="stretch")


def activations_tab(loaded: vistool.LoadedModel, batch: torch.Tensor) -> None:
    names = [row.name for row in loaded.layers if row.output_shape is not None]
    layer = st.selectbox("Layer", names, index=names.index(loaded.default_layer), key="layer")
    normalization = st.radio("Normalisation", ["channel", "layer"], horizontal=True,
                             key="normalization")
    act = vistool.activations(loaded, batch, layer).layers[layer][0]
    count = act.shape[0]
    shown = st.slider("Channels", 0, count - 1, (0, min(count, 64) - 1), key="channels")
    channels = list(range(shown[0], shown[1] + 1))
    grid = channel_grid(act, channels, normalization=normalization)
    st.image(to_uint8_hwc(grid), caption=f"{layer}: {tuple(act.shape)}")
    stats = channel_stats(act)
    st.dataframe({"channel": channels, **{k: v[channels].tolist() for k, v in stats.items()}})


def cam_tab(loaded: vistool.LoadedModel, batch: torch.Tensor, top: list[int]) -> None:
    spatial = [row.name for row in loaded.layers
               if row.output_shape is not None and len(row.output_shape) == 4]
    method = st.selectbox("Method", vistool.CAM_METHODS, index=1, key="cam_method")
    layer = st.selectbox("Layer", spatial, index=spatial.index(loaded.default_layer),
                         key="cam_layer")
    target = st.selectbox("Class", top, key="cam_target",
                          format_func=lambda i: f"{i}: {loaded.class_name(i) or ''}")
    try:
        result = vistool.explain(loaded, batch, method, targets=target, layer=layer, channels=32)
    except vistool.VistoolError as exc:
        st.error(str(exc))
        return
    view = vistool.deprocess(batch, loaded.mean, loaded.std)[0]
    st.image(to_uint8_hwc(enlarge(overlay(view, result.maps[0]))),
             caption=f"{method} · {layer} · class {target}"
                     f"{' (closed form)' if result.closed_form else ''}")


def main() -> None:
    st.set_page_config(page_title="vistool", layout="wide")
    st.title("vistool")
    model, weights, unknown = preset(script_arguments())
    if unknown:
        st.warning(f"ignored dashboard arguments {' '.join(unknown)!r}; it takes --model M "
                   "and --checkpoint F")
    spec, weights, device, upload, seed = sidebar(model, weights)
    try:
        loaded, notices = get_model(spec, weights, device, newest_checkpoint(spec, weights))
        image = vistool.load_image(upload.getvalue() if upload else sample_image(seed))
        batch = loaded.preprocess(image)
    except vistool.VistoolError as exc:
        st.error(str(exc))
        return
    show_weights(loaded, notices)
    top = predictions(loaded, image, batch)
    tab_layers, tab_acts, tab_cam = st.tabs(["Layers", "Activations", "Class activation map"])
    with tab_layers:
        layers_tab(loaded)
    with tab_acts:
        activations_tab(loaded, batch)
    with tab_cam:
        cam_tab(loaded, batch, top)


main()
