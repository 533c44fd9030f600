"""Filters: feature-visualisation images of chosen channels of the chosen layer, beside the
channels' activations for the current image; images for any objective written as text
(``features.12:3 - 0.5*diversity(features.12)``: a small language, no code runs); the first
layer's kernels as RGB."""

from __future__ import annotations

from pathlib import Path

import streamlit as st
import torch
from torch.utils.data import DataLoader

import vistool
from dashboard.common import Session, activations, progress_reporter, selected_layer, tab
from dashboard.security import check_path
from vistool.core.errors import VistoolError
from vistool.data.sources import ImageStream, collate, collect
from vistool.drawing import enlarge, image_grid, normalize, to_uint8_hwc
from vistool.synthesize.examples import receptive_field


@tab
def render(session: Session) -> None:
    loaded = session.loaded
    layer = selected_layer(session, spatial=True)
    acts = activations(session.key, session.digest, (layer,), session)[layer]
    strongest = torch.from_numpy(acts).flatten(1).mean(1).argsort(descending=True)
    st.caption(f"layer **{layer}** (choose it in the Layers tab); the channels most active "
               "for this image come first")
    channels = st.multiselect("Channels", list(range(acts.shape[0])),
                              default=sorted(strongest[:4].tolist()), key="fv_channels")
    left, right = st.columns(2)
    size = left.select_slider("Size", [64, 96, 128, 160, 224], value=64, key="fv_size")
    steps = right.select_slider("Steps", [32, 64, 128, 256, 512], value=64, key="fv_steps")
    run, stop = st.columns([1, 1])
    stop.button("Stop", key="fv_stop", help="stops the rendering (any widget change does)")
    if run.button("Render", key="fv_run", type="primary", disabled=not channels):
        with session.lock:
            result = vistool.render_filters(loaded, layer, channels, size=size, steps=steps,
                                            progress=progress_reporter("rendering"))
        st.session_state["fv_result"] = (session.key, layer, list(channels),
                                         result.images.cpu())
    stored = st.session_state.get("fv_result")
    if stored and stored[:2] == (session.key, layer):
        _, _, shown, images = stored
        for column, channel, image in zip(st.columns(len(shown)), shown, images):
            column.image(to_uint8_hwc(image), caption=f"channel {channel}")
            heat = normalize(torch.from_numpy(acts[channel]).float())
            column.image(to_uint8_hwc(enlarge(heat[None].expand(3, -1, -1), 96)),
                         caption="its activation here")
        with st.expander("Dataset examples"):
            examples(session, layer, shown)
    with st.expander("Any objective"):
        objective(session, layer, size, steps)
    with st.expander("First-layer kernels as RGB"):
        st.image(kernel_picture(session.key, session), caption="0.5 grey = zero weight")


@st.cache_data(show_spinner=False, max_entries=8)
def kernel_picture(key: tuple, _session: Session):
    return to_uint8_hwc(image_grid(vistool.first_layer_weights(_session.loaded), cell=32))


def objective(session: Session, layer: str, size: int, steps: int) -> None:
    """A batch of images for an objective written as text (the Size and Steps above)."""
    text = st.text_input("Objective", f"{layer}:0 - 0.5*diversity({layer})", key="fv_objective",
                         help="LAYER:CHANNEL, LAYER:CHANNEL:neuron, logit:CLASS and the "
                              "functions channel, neuron, logit, deepdream, diversity, l1, "
                              "l2, total_variation, blur, with + - * and numbers; a leading "
                              "minus for the negative image")
    batch = st.slider("Batch", 1, 8, 4, key="fv_batch",
                      help="images rendered together (diversity(LAYER) pushes them apart)")
    if st.button("Render objective", key="fv_objective_run"):
        with session.lock:
            result = vistool.render(session.loaded, text, batch=batch, size=size, steps=steps,
                                    read_files=False, progress=progress_reporter("rendering"))
        st.session_state["fv_objective_result"] = (session.key, result.objective,
                                                   result.images.cpu())
    stored = st.session_state.get("fv_objective_result")
    if stored and stored[0] == session.key:
        st.image(to_uint8_hwc(image_grid(stored[2], cell=size)), caption=stored[1])


def examples(session: Session, layer: str, shown: list[int]) -> None:
    """Each rendered channel's top images in a dataset or a folder the dashboard may read:
    the patches its strongest positions see."""
    source = st.text_input("Examples from", "shapes:200", key="fv_examples_source",
                           help="a dataset (shapes:N, digits) or a folder of images inside "
                                "the folders this dashboard may read")
    if not st.button("Find examples", key="fv_examples_run"):
        return
    if source.split(":", 1)[0] not in ("shapes", "digits"):
        check_path(source, "the Examples folder")
        if not Path(source).is_dir():
            raise VistoolError(f"the Examples box {source!r} is neither a dataset (shapes:N, "
                               "digits) nor a folder; give one of them")
    sources = collect([source])
    stream = ImageStream(sources, session.loaded.transform)
    kept: list[int] = []  # the readable images' places in the stream

    def batches():
        for positions, batch, _errors in DataLoader(stream, batch_size=32, collate_fn=collate):
            if batch is not None:
                kept.extend(positions)
                yield batch.to(session.loaded.device)

    with session.lock:
        found = vistool.top_examples(session.loaded, batches(), layer, top=6,
                                     total=len(sources), progress=progress_reporter("examples"))
        field = receptive_field(session.loaded, layer, session.loaded.input_size[-1])

    def picture(index: int) -> torch.Tensor:
        return vistool.deprocess(stream[kept[index]][1], session.loaded.mean,
                                 session.loaded.std)

    for channel in shown:
        row = found.patches(channel, picture, field, (64, 64))
        st.image(to_uint8_hwc(image_grid(torch.stack(row), cols=len(row))),
                 caption=f"channel {channel}: its top {len(row)} of {found.images} images")
