"""Class activation maps: several methods side by side for one class, each with its own
options, the layer's map or several layers' fused, with each map's deletion and insertion
AUC, and downloads."""

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
    spatial_layers,
    tab,
)
from vistool.drawing import apply_colormap, enlarge, overlay, to_uint8_hwc
from vistool.evaluate.faithfulness import Scorer, perturbation_curve
from vistool.explainers.cams import methods as cam_methods
from vistool.explainers.factorization import concept_picture
from vistool.explainers.names import FUSIONS


@st.cache_data(show_spinner=False, max_entries=64)
def cam(key: tuple, digest: str, method: str, layer: tuple[str, ...], target: int,
        smoothing: tuple, _session: Session) -> dict:
    """The map at input resolution and the raw map of the first layer (or of the input, for
    the methods that make their map there); ``layer``: the layers, the first the one chosen
    in the Layers tab; ``smoothing``: (aug_smooth, eigen_smooth, fuse, the method's options
    as sorted (name, value) pairs)."""
    aug_smooth, eigen_smooth, fuse, options = smoothing
    with _session.lock:
        result = vistool.explain(_session.loaded, _session.batch, method, targets=target,
                                 layer=list(layer), channels=32, aug_smooth=aug_smooth,
                                 eigen_smooth=eigen_smooth, fuse=fuse, options=dict(options))
    raw = result.raw.get(layer[0], next(iter(result.raw.values())))
    return {"map": result.maps[0].cpu().numpy(), "raw": raw[0].cpu().numpy(),
            "closed_form": result.closed_form}


@st.cache_data(show_spinner=False, max_entries=64)
def scores(key: tuple, digest: str, method: str, layer: tuple[str, ...], target: int,
           smoothing: tuple, _session: Session) -> dict[str, float]:
    """The map's deletion and insertion AUC (16 steps: 34 forwards of the model)."""
    found = cam(key, digest, method, layer, target, smoothing, _session)
    maps = torch.from_numpy(found["map"])[None].to(_session.batch.device)
    with _session.lock:
        score = Scorer(_session.loaded, _session.batch)  # one model copy for both curves
        return {mode: float(perturbation_curve(score, _session.batch, maps, target, mode,
                                               steps=16).auc[0])
                for mode in ("deletion", "insertion")}


@st.cache_data(show_spinner=False, max_entries=128)
def pictures(key: tuple, digest: str, method: str, layer: tuple[str, ...], target: int,
             smoothing: tuple, alpha: float, colormap: str, _session: Session) -> tuple:
    """The overlay and the raw map as pictures, and the overlay's PNG for the download."""
    found = cam(key, digest, method, layer, target, smoothing, _session)
    heat = torch.from_numpy(found["map"])
    view = vistool.deprocess(_session.batch, _session.loaded.mean, _session.loaded.std)[0]
    picture = to_uint8_hwc(enlarge(overlay(view.cpu(), heat, alpha, colormap), 256))
    return (picture, to_uint8_hwc(enlarge(apply_colormap(heat, colormap), 128)),
            png_bytes(picture), npy_bytes(np.asarray(found["raw"])))


@st.cache_data(show_spinner=False, max_entries=16)
def concepts(key: tuple, digest: str, layer: str, count: int, _session: Session) -> tuple:
    """Deep Feature Factorization of the image at ``layer``: the picture with one colour per
    concept, and each concept's colour and best class."""
    import matplotlib

    with _session.lock:
        found = vistool.factorize(_session.loaded, _session.batch, layer, concepts=count)
    rainbow = matplotlib.colormaps["gist_rainbow"]
    colors = [rainbow(i / count)[:3] for i in range(count)]
    picture = concept_picture(found.inputs[0].float().cpu(), found.maps[0].float().cpu(),
                              colors=colors)
    names = [] if found.scores is None else [
        _session.loaded.class_name(int(i)) or str(int(i)) for i in found.scores.argmax(1)]
    return (to_uint8_hwc(enlarge(picture, 256)),
            [matplotlib.colors.to_hex(c) for c in colors], names)


def method_options(method: str) -> tuple:
    """The method's own options, one widget each (in an expander), as sorted (name, value)
    pairs; none for a method without options."""
    params = cam_methods()[method].params
    if not params:
        return ()
    values = {}
    with st.expander(f"{method} options"):
        for name, param in params.items():
            key = f"cam_option_{method}_{name}"
            if param.choices:
                values[name] = st.selectbox(name, param.choices, help=param.help, key=key,
                                            index=param.choices.index(param.default))
            elif isinstance(param.default, str):
                values[name] = st.text_input(name, param.default, help=param.help, key=key)
            else:
                values[name] = st.number_input(name, value=param.default, help=param.help,
                                               key=key)
    return tuple(sorted(values.items()))


def _smoothing_and_fusion(session: Session, layer: str) -> tuple:
    """The smoothing toggles and the layers to fuse: (aug_smooth, eigen_smooth, the layers
    (the chosen one first), the fusion or None for the method's own)."""
    aug, eigen = st.columns(2)
    aug_smooth = aug.toggle("Augmentation smoothing", key="cam_aug_smooth",
                            help="the mean map of six test-time augmentations (flip x 0.9, 1, "
                                 "1.1 times the input), each flipped back: six explanations")
    eigen_smooth = eigen.toggle("Eigen smoothing", key="cam_eigen_smooth",
                                help="the first principal component of the weighted "
                                     "activations instead of their channel sum, for the "
                                     "methods whose map is such a sum")
    more, how = st.columns(2)
    extra = more.multiselect("Fuse with layers", [n for n in spatial_layers(session)
                                                  if n != layer], key="cam_fuse_layers",
                             help="explain these layers too and fuse their maps with the "
                                  "chosen layer's")
    fusion = how.selectbox("Fusion", ["the method's own", *FUSIONS], key="cam_fusion",
                           disabled=not extra,
                           help="mean (pytorch-grad-cam's) or product (RefineCAM's) of the "
                                "normalised maps, or sum of the raw ones (LeGrad's); the "
                                "method's own: product for refinecam, sum for legrad, else "
                                "mean")
    layers = (layer, *extra)
    fuse = None if not extra or fusion not in FUSIONS else fusion
    return aug_smooth, eigen_smooth, layers, fuse


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
    aug_smooth, eigen_smooth, layers, fuse = _smoothing_and_fusion(session, layer)
    specs = cam_methods()
    for column, method in zip(st.columns(max(1, len(methods))), methods):
        with column, guard():
            options = method_options(method)
            eigen_applies = eigen_smooth and specs[method].eigen_smooth
            args = (session.key, session.digest, method, layers, int(target),
                    (aug_smooth, eigen_applies, fuse, options))
            found = cam(*args, session)
            picture, raw, png, npy = pictures(*args, alpha, colormap, session)
            st.image(picture, caption=f"{method}{' (closed form)' if found['closed_form'] else ''}")
            st.image(raw, caption="raw map")
            if eigen_smooth and not eigen_applies:
                st.caption(f"eigen smoothing does not apply to {method}")
            if method == "dff":
                picture, colors, names = concepts(session.key, session.digest, layer,
                                                  int(dict(options)["concepts"]), session)
                st.image(picture, caption="dff concepts, one colour each")
                st.caption(" · ".join(f"{c}: {n or 'no head'}" for c, n in
                                      zip(colors, names or [""] * len(colors))))
            if scored:
                auc = scores(*args, session)
                st.markdown(f"deletion AUC **{auc['deletion']:.3f}** ↓ · insertion AUC "
                            f"**{auc['insertion']:.3f}** ↑")
            stem = f"{method}-{'+'.join(layers)}-c{target}"
            st.download_button("overlay PNG", png, f"{stem}.png", "image/png",
                               key=f"cam_png_{method}")
            st.download_button("raw .npy", npy, f"{stem}.npy", key=f"cam_npy_{method}")
