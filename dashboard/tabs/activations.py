"""Activations: the channel grid of the chosen layer, one channel large over the input,
channel statistics, and a walk through every layer (as CNN Explainer)."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

import vistool
from dashboard.common import Session, activations, selected_layer, spatial_layers, tab
from vistool.drawing import (
    channel_grid,
    enlarge,
    image_grid,
    line_chart,
    normalize,
    overlay,
    to_uint8_hwc,
)
from vistool.explainers.activations import channel_stats


@tab
def render(session: Session) -> None:
    layer = selected_layer(session)
    acts = activations(session.key, session.digest, (layer,), session)[layer]
    st.caption(f"layer **{layer}** (choose it in the Layers tab): output {tuple(acts.shape)}")
    if acts.ndim != 3:
        st.info(f"{layer} has no spatial grid; its values:")
        st.bar_chart(acts.reshape(-1)[:256])
        return
    normalization = st.radio("Normalisation", ["channel", "layer"], horizontal=True,
                             key="normalization")
    count = acts.shape[0]
    lo, hi = st.slider("Channels", 0, count - 1, (0, min(count, 64) - 1), key="channels")
    st.image(grid_picture(session.key, session.digest, layer, lo, hi, normalization, acts),
             caption=f"{layer}: channels {lo}–{hi}")
    stats = {k: v.numpy() for k, v in channel_stats(torch.from_numpy(acts)).items()}
    channel_view(session, layer, acts, int(stats["mean"].argmax()))
    order = np.argsort(-stats["mean"])
    st.dataframe({"channel": order, **{k: v[order] for k, v in stats.items()}},
                 hide_index=True, key="channel_stats")
    if st.toggle("Walk through every layer", value=True, key="walk"):
        walk(session)


@st.cache_data(show_spinner=False, max_entries=32)
def grid_picture(key: tuple, digest: str, layer: str, lo: int, hi: int, normalization: str,
                 _acts: np.ndarray) -> np.ndarray:
    return to_uint8_hwc(channel_grid(torch.from_numpy(_acts), list(range(lo, hi + 1)),
                                     normalization=normalization))


@st.cache_data(show_spinner=False, max_entries=8)
def input_view(key: tuple, digest: str, _session: Session) -> torch.Tensor:
    return vistool.deprocess(_session.batch, _session.loaded.mean, _session.loaded.std)[0].cpu()


@st.fragment
def channel_view(session: Session, layer: str, acts: np.ndarray, strongest: int) -> None:
    """One channel large over the input; its sliders rerun only this fragment."""
    channel = st.slider("Channel", 0, acts.shape[0] - 1, strongest, key="channel")
    alpha = st.slider("Opacity over the input", 0.0, 1.0, 0.7, key="channel_alpha")
    view = input_view(session.key, session.digest, session)
    heat = normalize(torch.from_numpy(acts[channel]).float())
    st.image(to_uint8_hwc(enlarge(overlay(view, heat, alpha, "viridis"), 256)),
             caption=f"{layer} channel {channel}")


def walk(session: Session) -> None:
    """Mean activation per layer and each layer's strongest channel, input to output."""
    names = tuple(spatial_layers(session))
    chart, picture = walk_pictures(session.key, session.digest, names, session)
    st.image(chart, caption="mean activation per layer")
    st.image(picture, caption="the strongest channel of each layer: " + " → ".join(names))


@st.cache_data(show_spinner=False, max_entries=8)
def walk_pictures(key: tuple, digest: str, names: tuple[str, ...], _session: Session
                  ) -> tuple[np.ndarray, np.ndarray]:
    acts = activations(key, digest, names, _session)
    thumbs = []
    for name in names:
        value = torch.from_numpy(acts[name])
        best = value[int(value.flatten(1).mean(1).argmax())]
        thumbs.append(torch.nn.functional.interpolate(normalize(best)[None, None], size=48)[0])
    picture = to_uint8_hwc(image_grid(torch.stack(thumbs).expand(-1, 3, -1, -1),
                                      cols=min(12, len(thumbs))))
    steps = list(range(len(names)))
    chart = line_chart([{"xlabel": "layer (input → output)", "ylabel": "mean activation",
                         "xticks": (steps, list(names)),
                         "series": {"mean": (steps, [float(acts[n].mean()) for n in names])}}],
                       width=9.0, height=3.0)
    return chart, picture
