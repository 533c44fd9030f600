"""What every tab shares: the session (model, image, batch), cached computations and the
error guard. Models live in ``st.cache_resource`` (one per spec, weights and device, with a
lock: hooks touch the shared model); forward results and maps in ``st.cache_data``, keyed by
the model's key, the image's digest and the options, so reruns and sliders reuse them."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import streamlit as st
import torch
from PIL import Image

import vistool
from dashboard.security import inside, remember_upload
from vistool.core.cache import checkpoint_catalogue, trained_checkpoints
from vistool.core.errors import RandomWeightsWarning, VistoolError, VistoolWarning, name_parameters
from vistool.generative import model_kind

SAMPLES = Path(__file__).with_name("samples")
MAX_UPLOAD_MB = float(os.environ.get("VISTOOL_DASHBOARD_MAX_UPLOAD_MB", "20"))
#: The widget where the page sets each library parameter that messages name; a value is
#: shown after it (``the Octaves slider set to 4``). A parameter missing here has no widget:
#: the message shows it as the Python parameter.
WIDGETS = {
    "spec": "the Model box", "weights": "the Weights box", "device": "the Device choice",
    "layer": "the layer chosen in the Layers tab", "octaves": "the Octaves slider",
    "steps": "the Steps slider", "size": "the Size slider", "styles": "the Style image upload",
    "masks": "the Masks folder box", "dataset": "the Data box",
    "options": "the method's options", "fuse": "the Fusion choice",
    "batch": "the Batch slider", "objective": "the Objective box",
    "eigen_smooth": "the Eigen smoothing toggle", "aug_smooth": "the Augmentation smoothing toggle",
}
#: What a placeholder value (``weights=FILE``) means in the page.
PLACEHOLDERS = {"weights": "a checkpoint file in the Weights box (or upload a checkpoint)",
                "classes": "a checkpoint that names its classes"}


@dataclass
class Session:
    """The model and image of this rerun.

    ``key`` names the model in the caches (spec, weights, device, newest checkpoint);
    ``digest`` the image; ``batch`` is None for a model that takes no images (a GAN)."""

    loaded: vistool.LoadedModel
    key: tuple
    notices: list[str]
    kind: str
    image: Image.Image | None
    digest: str
    batch: torch.Tensor | None
    lock: threading.Lock


def newest_checkpoint(spec: str, weights: str) -> str:
    """The trained checkpoint a book model name with default weights resolves to now, with
    its time: part of the model cache key, so one trained while the page is open is used."""
    found = trained_checkpoints(spec) if weights == "default" else []
    return f"{found[0]}@{found[0].stat().st_mtime_ns}" if found else ""


@st.cache_resource(show_spinner="loading model …", max_entries=4)
def get_model(spec: str, weights: str, device: str, newest: str
              ) -> tuple[vistool.LoadedModel, list[str], threading.Lock]:
    """The loaded model, what vistool warned about it (for the page, not the console; random
    weights are shown from ``LoadedModel.random_weights`` instead) and the lock that
    serialises computations on it. ``newest`` is only part of the cache key."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VistoolWarning)
        loaded = vistool.load_model(spec, weights=weights, device=device)
    notices = []
    for warning in caught:
        if not issubclass(warning.category, VistoolWarning):
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
        elif not (loaded.random_weights and issubclass(warning.category, RandomWeightsWarning)):
            notices.append(page_message(warning.message))
    return loaded, notices, threading.Lock()


@st.cache_data(show_spinner=False, ttl=60)
def catalogue(roots: tuple[str, ...]) -> list[tuple[str, str]]:
    """``(label, spec)`` of every model the sidebar offers: the trained checkpoints one folder
    below the allowed ``roots`` (``runs/``, the vistool cache, the operator's allowed
    folders; with recipe and metrics; none whose real path, symlinks followed, lies outside
    them), then the book models and the torchvision classifiers."""
    allowed = [Path(root) for root in roots]
    entries = []
    for item in checkpoint_catalogue(allowed):
        if not inside(item["path"], allowed):
            continue
        metrics = ", ".join(f"{k} {v:.3g}" for k, v in item["metrics"].items()
                            if isinstance(v, (int, float)) and k.startswith("val"))
        label = f"{item['path']} — {item['recipe'] or item['arch']}"
        entries.append((label + (f" ({metrics})" if metrics else ""), str(item["path"])))
    names = vistool.list_models()
    entries += [(f"{name} (book model)", name) for name in names["book"]]
    entries += [(f"{name} (torchvision)", name) for name in names["torchvision"]]
    return entries


def widget_name(name: str, value: str | None) -> str | None:
    """A library parameter as this page names it: its widget (and value), or None."""
    if value is not None and value.isupper() and name in PLACEHOLDERS:
        return PLACEHOLDERS[name]
    widget = WIDGETS.get(name)
    if widget is None:
        return None
    return widget if value is None else f"{widget} set to {value}"


def page_message(message: object) -> str:
    """A library error or warning as the page says it: its parameters named as widgets."""
    return name_parameters(str(message), widget_name)


def digest_of(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


def image_bytes(image: Image.Image) -> bytes:
    return image.tobytes() + repr((image.size, image.mode)).encode()


def sample_image(source: str, seed: int) -> np.ndarray | Path:
    """A bundled photograph (``photo:NAME``), a shapes scene or a digit."""
    if source.startswith("photo:"):
        return SAMPLES / f"{source.split(':', 1)[1]}.jpg"
    rng = np.random.default_rng(seed)
    if source == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        index = int(rng.integers(len(digits.images)))
        return np.repeat((digits.images[index] * 16).clip(0, 255).astype(np.uint8)[..., None],
                         3, 2)
    from vistool.data.shapes import SHAPE_CLASSES, render_scene

    return render_scene(rng, 128, [int(rng.integers(len(SHAPE_CLASSES)))]).image


def check_upload(upload) -> bytes:
    """An upload's bytes, refused over the size limit (``VISTOOL_DASHBOARD_MAX_UPLOAD_MB``)."""
    data = upload.getvalue()
    if len(data) > MAX_UPLOAD_MB * 1024 * 1024:
        raise VistoolError(f"{upload.name} is {len(data) / 2**20:.1f} MB; the dashboard takes "
                           f"uploads up to {MAX_UPLOAD_MB:g} MB "
                           "(VISTOOL_DASHBOARD_MAX_UPLOAD_MB)")
    return data


def save_uploaded_checkpoint(upload) -> Path:
    """An uploaded checkpoint saved under this session's own temporary folder (by its base
    name only), which the page may then name as the model; loading it unpickles no code
    (``vistool.core.checkpoint``)."""
    import tempfile

    if "upload_dir" not in st.session_state:
        st.session_state["upload_dir"] = tempfile.mkdtemp(prefix="vistool-")
    folder = st.session_state["upload_dir"]
    name = Path(upload.name).name
    path = Path(folder) / (name if name not in ("", ".", "..") else "upload")
    path.write_bytes(upload.getvalue())
    remember_upload(path)
    return path


@contextlib.contextmanager
def guard() -> Iterator[None]:
    """Show a user's mistake as ``st.error`` with the library's one-line message, its
    parameters named as this page's widgets."""
    try:
        yield
    except VistoolError as exc:
        st.error(page_message(exc))


def tab(render):
    """A tab's ``render(session)`` as an ``st.fragment`` whose errors show as ``st.error``:
    its widgets rerun only the tab (the Layers tab, whose choice every tab follows, is a
    plain function and reruns the page)."""
    @functools.wraps(render)
    def run(session: Session) -> None:
        with guard():
            render(session)

    return st.fragment(run)


def session_of(spec: str, weights: str, device: str, image_source) -> Session:
    """Load the model (cached) and preprocess the image; raises VistoolError for bad input."""
    newest = newest_checkpoint(spec, weights)
    loaded, notices, lock = get_model(spec, weights, device, newest)
    try:
        kind = model_kind(loaded.model)
    except VistoolError:  # not generative: a classifier
        kind = "classifier"
    if kind != "classifier":
        return Session(loaded, (spec, weights, device, newest), notices, kind, None, "", None,
                       lock)
    image = vistool.load_image(image_source)
    batch = loaded.preprocess(image)
    return Session(loaded, (spec, weights, device, newest), notices, kind, image,
                   digest_of(image_bytes(image)), batch, lock)


def spatial_layers(session: Session) -> list[str]:
    return [row.name for row in session.loaded.layers
            if row.output_shape is not None and len(row.output_shape) == 4]


def default_layer(session: Session) -> str:
    """The model's default target layer, or its last layer when it has none (a VAE)."""
    try:
        return session.loaded.default_layer
    except VistoolError:
        return session.loaded.layers[-1].name


def selected_layer(session: Session, spatial: bool = False) -> str:
    """The layer chosen in the Layers tab; with ``spatial``, the default layer when that one
    has no spatial grid."""
    layer = st.session_state.get("layer") or default_layer(session)
    if spatial and layer not in spatial_layers(session):
        return session.loaded.default_layer
    return layer


@st.cache_data(show_spinner=False, max_entries=64)
def activations(key: tuple, digest: str, layers: tuple[str, ...], _session: Session
                ) -> dict[str, np.ndarray]:
    """The activations of ``layers`` for the session's image, one per layer (C, ...)."""
    with _session.lock:
        result = vistool.activations(_session.loaded, _session.batch, list(layers))
    return {name: value[0].float().cpu().numpy() for name, value in result.layers.items()}


@st.cache_data(show_spinner=False, max_entries=8)
def probabilities(key: tuple, digest: str, _session: Session) -> np.ndarray:
    with _session.lock, torch.no_grad(), vistool.preserved_state(_session.loaded.model,
                                                                 eval_mode=True):
        return _session.loaded.model(_session.batch).softmax(1)[0].float().cpu().numpy()


def png_bytes(image: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def progress_reporter(label: str, preview=None):
    """A ``progress`` callable for the library's long work: a Streamlit progress bar and,
    with a ``preview`` container, the intermediate images it is shown."""
    bar = st.progress(0.0, text=label)

    def report(done: int, total: int, image: torch.Tensor | None) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{label}: {done}/{total}")
        if image is not None and preview is not None:
            from vistool.drawing import to_uint8_hwc

            preview.image(to_uint8_hwc(image[0].clamp(0, 1)), caption=f"step {done}",
                          width=256)

    return report
