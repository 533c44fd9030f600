"""Class activation maps: several methods side by side for one class, with each map's
deletion and insertion AUC, and downloads."""

from __future__ import annotations

import numpy as np
import streamlit as st
import torch

import vistool
from dashboard.common import (
    Session,
    guard,
    npy_bytes,
    png_bytes,
    probabilities,
    selected_layer,
)
from vistool.evaluate.faithfulness import perturbation_curve
from vistool.render import apply_colormap, enlarge, overlay, to_uint8_hwc


@st.cache_data(show_spinner=False, max_entries=64)
def cam(key: tuple, digest: str, method: str, layer: str, target: int, _session: Session
        ) -> dict:
    """The map at input resolution, the raw layer map and, for deletion/insertion, scores."""
    with _session.lock:
        result = vistool.explain(_session.loaded, _session.batch, method, targets=target,
                                 layer=layer, channels=32 if method == "scorecam" else None)
        maps = result.maps
        auc = {mode: float(perturbation_curve(_session.loaded, _session.batch, maps, target,
                                              mode, steps=16).auc[0])
               for mode in ("deletion", "insertion")}
    return {"map": maps[0].cpu().numpy(), "raw": result.raw[layer][0].cpu().numpy(),
            "closed_form": result.closed_form, **auc}


def render(session: Session) -> None:
    loaded = session.loaded
    layer = selected_layer(session, spatial=True)
    probs = probabilities(session.key, session.digest, session)
    st.caption(f"layer **{layer}** (choose it in the Layers tab)")
    methods = st.multiselect("Methods", vistool.CAM_METHODS, default=["gradcam", "gradcam++",
                                                                      "layercam"],
                             key="cam_methods")
    classes = list(range(len(probs)))
    target = st.selectbox("Class (type to search)", classes, index=int(probs.argmax()),
                          format_func=lambda i: f"{i}: {loaded.class_name(i) or ''} "
                                                f"({probs[i]:.1%})", key="cam_class")
    left, right = st.columns(2)
    alpha = left.slider("Opacity", 0.0, 1.0, 0.5, key="cam_alpha")
    colormap = right.selectbox("Colour map", ["jet", "viridis", "inferno", "turbo", "gray"],
                               key="cam_colormap")
    view = vistool.deprocess(session.batch, loaded.mean, loaded.std)[0].cpu()
    for column, method in zip(st.columns(max(1, len(methods))), methods):
        with column, guard():
            found = cam(session.key, session.digest, method, layer, int(target), session)
            heat = torch.from_numpy(found["map"])
            picture = to_uint8_hwc(enlarge(overlay(view, heat, alpha, colormap), 256))
            st.image(picture, caption=f"{method}{' (closed form)' if found['closed_form'] else ''}")
            st.image(to_uint8_hwc(enlarge(apply_colormap(heat, colormap), 128)),
                     caption="raw map")
            st.markdown(f"deletion AUC **{found['deletion']:.3f}** ↓ · insertion AUC "
                        f"**{found['insertion']:.3f}** ↑")
            stem = f"{method}-{layer}-c{target}"
            st.download_button("overlay PNG", png_bytes(picture), f"{stem}.png", "image/png",
                               key=f"cam_png_{method}")
            st.download_button("raw .npy", npy_bytes(np.asarray(found["raw"])), f"{stem}.npy",
                               key=f"cam_npy_{method}")
