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
    tab,
)
from vistool.evaluate.faithfulness import Scorer, perturbation_curve
from vistool.explainers.cams import methods as cam_methods
from vistool.render import apply_colormap, enlarge, overlay, to_uint8_hwc


@st.cache_data(show_spinner=False, max_entries=64)
def cam(key: tuple, digest: str, method: str, layer: str, target: int, smoothing: tuple,
        _session: Session) -> dict:
    """The map at input resolution and the raw layer map; ``smoothing``: (aug_smooth,
    eigen_smooth)."""
    aug_smooth, eigen_smooth = smoothing
    with _session.lock:
        result = vistool.explain(_session.loaded, _session.batch, method, targets=target,
                                 layer=layer, channels=32 if method == "scorecam" else None,
                                 aug_smooth=aug_smooth, eigen_smooth=eigen_smooth)
    return {"map": result.maps[0].cpu().numpy(), "raw": result.raw[layer][0].cpu().numpy(),
            "closed_form": result.closed_form}


@st.cache_data(show_spinner=False, max_entries=64)
def scores(key: tuple, digest: str, method: str, layer: str, target: int, smoothing: tuple,
           _session: Session) -> dict[str, float]:
    """The map's deletion and insertion AUC (16 steps: 34 forwards of the model)."""
    found = cam(key, digest, method, layer, target, smoothing, _session)
    maps = torch.from_numpy(found["map"])[None].to(_session.batch.device)
    with _session.lock:
        score = Scorer(_session.loaded, _session.batch)  # one model copy for both curves
        return {mode: float(perturbation_curve(score, _session.batch, maps, target, mode,
                                               steps=16).auc[0])
                for mode in ("deletion", "insertion")}


@st.cache_data(show_spinner=False, max_entries=128)
def pictures(key: tuple, digest: str, method: str, layer: str, target: int, smoothing: tuple,
             alpha: float, colormap: str, _session: Session) -> tuple:
    """The overlay and the raw map as pictures, and the overlay's PNG for the download."""
    found = cam(key, digest, method, layer, target, smoothing, _session)
    heat = torch.from_numpy(found["map"])
    view = vistool.deprocess(_session.batch, _session.loaded.mean, _session.loaded.std)[0]
    picture = to_uint8_hwc(enlarge(overlay(view.cpu(), heat, alpha, colormap), 256))
    return (picture, to_uint8_hwc(enlarge(apply_colormap(heat, colormap), 128)),
            png_bytes(picture), npy_bytes(np.asarray(found["raw"])))


@tab
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
    left, middle, right = st.columns(3)
    alpha = left.slider("Opacity", 0.0, 1.0, 0.5, key="cam_alpha")
    colormap = middle.selectbox("Colour map", ["jet", "viridis", "inferno", "turbo", "gray"],
                                key="cam_colormap")
    scored = right.toggle("Deletion / insertion AUC", key="cam_scores",
                          help="score each map by deleting and inserting its pixels in order "
                               "(34 forward passes per map)")
    aug, eigen = st.columns(2)
    aug_smooth = aug.toggle("Augmentation smoothing", key="cam_aug_smooth",
                            help="the mean map of six test-time augmentations (flip x 0.9, 1, "
                                 "1.1 times the input), each flipped back: six explanations")
    eigen_smooth = eigen.toggle("Eigen smoothing", key="cam_eigen_smooth",
                                help="the first principal component of the weighted "
                                     "activations instead of their channel sum, for the "
                                     "methods whose map is such a sum")
    specs = cam_methods()
    for column, method in zip(st.columns(max(1, len(methods))), methods):
        with column, guard():
            eigen_applies = eigen_smooth and specs[method].eigen_smooth
            args = (session.key, session.digest, method, layer, int(target),
                    (aug_smooth, eigen_applies))
            found = cam(*args, session)
            picture, raw, png, npy = pictures(*args, alpha, colormap, session)
            st.image(picture, caption=f"{method}{' (closed form)' if found['closed_form'] else ''}")
            st.image(raw, caption="raw map")
            if eigen_smooth and not eigen_applies:
                st.caption(f"eigen smoothing does not apply to {method}")
            if scored:
                auc = scores(*args, session)
                st.markdown(f"deletion AUC **{auc['deletion']:.3f}** ↓ · insertion AUC "
                            f"**{auc['insertion']:.3f}** ↑")
            stem = f"{method}-{layer}-c{target}"
            st.download_button("overlay PNG", png, f"{stem}.png", "image/png",
                               key=f"cam_png_{method}")
            st.download_button("raw .npy", npy, f"{stem}.npy", key=f"cam_npy_{method}")
