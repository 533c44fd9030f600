"""Layers: the layer table, filterable; the layer chosen here is every other tab's."""

from __future__ import annotations

import streamlit as st

from dashboard.common import Session, default_layer


def render(session: Session) -> None:
    loaded = session.loaded
    query = st.text_input("Filter", key="layer_filter", placeholder="name or type: conv, layer4")
    rows = [row.to_dict() for row in loaded.layers]
    shown = [row for row in rows if query.lower() in f"{row['name']} {row['type']}".lower()]
    st.dataframe(shown, width="stretch", hide_index=True)
    names = [row["name"] for row in shown if row["output_shape"] is not None]
    if not names:
        st.info(f"no layer matches {query!r}")
        names = [default_layer(session)]
    current = st.session_state.get("layer")
    default = current if current in names else default_layer(session)
    st.selectbox("Layer (every tab uses it)", names,
                 index=names.index(default) if default in names else 0, key="layer")
