"""vistool dashboard: explore a model layer by layer, with every capability of the library.

Run with ``vistool dashboard [--model M] [--checkpoint F]`` or
``streamlit run dashboard/app.py [-- [--model M] [--checkpoint F]]``. The sidebar opens on
``--model`` (default ``shapes_cnn``, whose default weights are the newest trained checkpoint
that ``make demo`` or ``vistool train shapes-cnn`` wrote; without one the page warns that the
weights are random). ``--checkpoint F`` alone opens that trainers checkpoint; with ``--model``
it gives that model's weights. The tabs live in ``dashboard/tabs/``; every computation is a
call into the ``vistool`` library (see ``dashboard/common.py`` for the caching).

Served, it is careful (``dashboard/security.py``): with ``VISTOOL_DASHBOARD_TOKEN`` set (``vistool
dashboard`` sets a random one) the page shows only a token prompt, loads no model and reads no
file until the tab has shown the token; ``file.py:factory`` typed into the page is refused unless
``VISTOOL_DASHBOARD_ALLOW_CODE=1``; typed paths must lie in ``./runs``, the vistool cache or a
folder of ``VISTOOL_DASHBOARD_ALLOW_PATHS``; the model and checkpoint the server was started with
are always allowed. Streamlit's Deploy button is hidden (``client.toolbarMode`` minimal unless
configured otherwise).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import streamlit as st
from streamlit import config as st_config

import vistool
from dashboard import common, security
from dashboard.tabs import CLASSIFIER_TABS, GENERATIVE_TABS

DEFAULT_MODEL = "shapes_cnn"
RANDOM_NOTICE = ("**The weights are random** ({weights}): the predictions and maps below show "
                 "an untrained network. For a trained shapes_cnn run `make demo` (it caches one) "
                 "or `vistool train shapes-cnn` and rerun this page, or enter a checkpoint file "
                 "as the model.")
SOURCES = {"shapes": "a shapes scene", "digits": "a digit (scikit-learn)",
           "photo:chelsea": "photograph: cat", "photo:coffee": "photograph: coffee",
           "photo:astronaut": "photograph: astronaut", "upload": "upload an image"}


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


def _catalogue() -> list[tuple[str, str]]:
    """The sidebar's model list: checkpoints inside the allowed folders, then model names."""
    return common.catalogue(tuple(str(root) for root in security.allowed_roots()))


def _picked() -> None:
    """The catalogue's choice becomes the model (and its default weights)."""
    spec = dict(_catalogue()).get(st.session_state.get("model_pick"))
    if spec:
        st.session_state["model"] = spec
        st.session_state["weights"] = "default"


def _uploaded_checkpoint() -> None:
    """An uploaded checkpoint is saved for this session and becomes the model."""
    upload = st.session_state.get("checkpoint_upload")
    if upload is None:
        return
    st.session_state["model"] = str(common.save_uploaded_checkpoint(upload))
    st.session_state["weights"] = "default"


def sidebar(model: str, weights: str) -> tuple[str, str, str, object]:
    """Model (catalogue, typed or uploaded), weights, device and image; returns the model
    spec, weights, device and the image source."""
    with st.sidebar:
        labels = [label for label, _ in _catalogue()]
        st.selectbox("Pick a model", labels, index=None, key="model_pick", on_change=_picked,
                     placeholder="trained checkpoints, book and torchvision models")
        spec = st.text_input("Model", value=model, key="model",
                             help="torchvision name, book model, checkpoint or file.py:factory")
        weights = st.text_input("Weights", value=weights, key="weights",
                                help="default, none, or a state-dict file")
        st.file_uploader("…or upload a checkpoint", type=["safetensors", "pt", "pth"],
                         key="checkpoint_upload", on_change=_uploaded_checkpoint)
        device = st.selectbox("Device", ["auto", "cpu", "cuda", "mps"], key="device")
        source = st.selectbox("Image", list(SOURCES), format_func=SOURCES.get, key="source")
        if source == "upload":
            upload = st.file_uploader("Image file", key="image_upload",
                                      type=sorted(e.strip(".") for e in
                                                  vistool.core.imageio.IMAGE_EXTENSIONS))
            image = common.check_upload(upload) if upload else common.sample_image("shapes", 0)
        else:
            seed = st.number_input("Sample seed", value=0, step=1, key="seed")
            image = common.sample_image(source, int(seed))
    return spec, weights, device, image


def show_model(session: common.Session) -> None:
    """Where the weights came from (sidebar) and, prominently, when they are random."""
    st.sidebar.caption(f"Weights: {session.loaded.weights}")
    if session.loaded.random_weights:
        st.warning(RANDOM_NOTICE.format(weights=session.loaded.weights), icon="⚠️")
    for notice in session.notices:
        st.warning(notice)


def predictions(session: common.Session) -> None:
    """The input beside its top-5 classes, above every tab."""
    probs = common.probabilities(session.key, session.digest, session)
    order = probs.argsort()[::-1][:5]
    col_image, col_pred = st.columns([1, 2])
    col_image.image(session.image, caption="input", width="stretch")
    col_pred.table({"class": [session.loaded.class_name(int(i)) or int(i) for i in order],
                    "probability": [round(float(probs[i]), 4) for i in order]})


def hide_deploy_button() -> None:
    """No Deploy button (nor other developer options) unless the operator configured the
    toolbar: ``vistool dashboard`` passes ``--client.toolbarMode minimal``; under a bare
    ``streamlit run`` the option is set here and the page reruns once to show it."""
    if not st_config.is_manually_set("client.toolbarMode"):
        st.set_option("client.toolbarMode", "minimal")
        st.rerun()


def main() -> None:
    st.set_page_config(page_title="vistool", layout="wide")
    hide_deploy_button()
    st.title("vistool")
    if not security.admitted():  # before anything reads a file or loads a model
        return
    model, weights, unknown = preset(script_arguments())
    if unknown:
        st.warning(f"ignored dashboard arguments {' '.join(unknown)!r}; it takes --model M "
                   "and --checkpoint F")
    try:
        spec, chosen, device, image = sidebar(model, weights)
        security.check_model(spec, operator=model)
        security.check_weights(chosen, operator=weights)
        session = common.session_of(spec, chosen, device, image)
    except vistool.VistoolError as exc:
        st.error(common.page_message(exc))
        return
    show_model(session)
    tabs = CLASSIFIER_TABS
    if session.batch is None:
        st.info(f"{spec} is a {session.kind}: see the Generative tab")
        tabs = GENERATIVE_TABS
    else:
        predictions(session)
    for tab, (_, module) in zip(st.tabs([title for title, _ in tabs]), tabs):
        with tab, common.guard():
            module.render(session)


main()
