"""Evaluate: the explanation-quality metrics of several methods on a sample of the shapes
data (or an image folder), as ``vistool evaluate`` computes them. A typed image or masks
folder must lie in the folders the dashboard may read (``dashboard.security``)."""

from __future__ import annotations

import streamlit as st

from dashboard.common import Session, selected_layer, tab
from dashboard.security import check_path
from vistool.drawing import line_chart
from vistool.evaluate.data import load_eval_set
from vistool.evaluate.names import EVAL_METHODS, LOCALISATION, METRICS
from vistool.evaluate.report import curve_panels, markdown_table, sanity_panels
from vistool.evaluate.suite import evaluate

FAST = ["pointing_game", "energy_pointing_game", "sparseness", "deletion_auc", "insertion_auc"]


@tab
def render(session: Session) -> None:
    dataset = st.text_input("Data", "shapes", key="eval_dataset",
                            help="shapes (labels, boxes and masks known) or imagefolder:DIR")
    masks = st.text_input("Masks folder (image folders only)", "", key="eval_masks") or None
    limit = st.slider("Images", 4, 128, 16, key="eval_limit")
    methods = st.multiselect("Methods", EVAL_METHODS, default=["gradcam", "saliency", "random"],
                             key="eval_methods")
    metrics = st.multiselect("Metrics", METRICS, default=FAST, key="eval_metrics")
    sanity = st.checkbox("Sanity check (cascading randomisation)", key="eval_sanity")
    run, stop = st.columns(2)
    stop.button("Stop", key="eval_stop")
    if run.button("Evaluate", key="eval_run", type="primary", disabled=not (methods and metrics)):
        if dataset.startswith("imagefolder:"):
            check_path(dataset.split(":", 1)[1], "the image folder")
        if masks is not None:
            check_path(masks, "the masks folder")
        data = load_eval_set(session.loaded, dataset, masks, limit)
        if data.masks is None and data.boxes is None:
            metrics = [m for m in metrics if m not in LOCALISATION]
        with session.lock, st.spinner("evaluating …"):
            ev = evaluate(session.loaded, data.images, data.labels, methods, metrics,
                          masks=data.masks, boxes=data.boxes,
                          layer=selected_layer(session, spatial=True), steps=16,
                          sanity=sanity, batch_size=64)
        charts = curve_panels(ev) + (sanity_panels(ev) if ev.sanity else [])
        st.session_state["eval_result"] = (session.key, markdown_table(ev.summary(), metrics),
                                           line_chart(charts) if charts else None)
    stored = st.session_state.get("eval_result")
    if stored and stored[0] == session.key:
        st.markdown(stored[1])
        if stored[2] is not None:
            st.image(stored[2], caption="mean curves per method")
