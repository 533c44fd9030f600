"""DeepDream: amplify what the chosen layer sees in the image, with live progress."""

from __future__ import annotations

import streamlit as st

import vistool
from dashboard.common import Session, png_bytes, progress_reporter, selected_layer, tab
from vistool.drawing import to_uint8_hwc


@tab
def render(session: Session) -> None:
    layer = selected_layer(session, spatial=True)
    st.caption(f"dreams at layer **{layer}** (choose it in the Layers tab)")
    a, b, c = st.columns(3)
    octaves = a.slider("Octaves", 1, 6, 3, key="dream_octaves")
    steps = b.slider("Steps per octave", 1, 50, 10, key="dream_steps")
    lr = c.select_slider("Step size", [0.005, 0.01, 0.02, 0.05], value=0.01, key="dream_lr")
    run, stop = st.columns(2)
    stop.button("Stop", key="dream_stop")
    if run.button("Dream", key="dream_run", type="primary"):
        preview = st.empty()
        images = vistool.deprocess(session.batch, session.loaded.mean, session.loaded.std)
        with session.lock:
            result = vistool.deepdream(session.loaded, images, layer, octaves=octaves,
                                       steps=steps, lr=lr,
                                       progress=progress_reporter("dreaming", preview))
        st.session_state["dream_result"] = (session.key, session.digest,
                                            to_uint8_hwc(result.images[0]))
    stored = st.session_state.get("dream_result")
    if stored and stored[:2] == (session.key, session.digest):
        st.image(stored[2], caption=f"deepdream · {layer}")
        st.download_button("PNG", png_bytes(stored[2]), "deepdream.png", "image/png",
                           key="dream_png")
