"""What the page may do on the server: the access token, code named from the page, and the
folders typed paths may point into.

``vistool dashboard`` passes its settings in the environment (so ``streamlit run
dashboard/app.py`` started by hand honours the same variables):

``VISTOOL_DASHBOARD_TOKEN``
    the token a browser tab must show (``?token=…`` in the URL, or typed into the prompt)
    before the page renders anything else; unset or empty: no token.
``VISTOOL_DASHBOARD_ALLOW_CODE``
    ``1``: ``file.py:factory`` / ``module:factory`` typed into the page is imported and run;
    otherwise only the operator's own ``--model`` may name code.
``VISTOOL_DASHBOARD_ALLOW_PATHS``
    folders (``os.pathsep``-separated) that typed paths may point into, besides ``./runs``
    and the vistool cache.

Nothing here reads a file or imports a model: the checks run before the library does.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

import streamlit as st

from vistool.core.cache import cache_dir
from vistool.core.errors import VistoolError
from vistool.core.zoo import CHECKPOINT_SUFFIXES

TOKEN_ENV = "VISTOOL_DASHBOARD_TOKEN"
ALLOW_CODE_ENV = "VISTOOL_DASHBOARD_ALLOW_CODE"
ALLOW_PATHS_ENV = "VISTOOL_DASHBOARD_ALLOW_PATHS"
_ADMITTED = "_vistool_admitted"
_UPLOADED = "_vistool_uploaded"


class AccessError(VistoolError):
    """The page named something on the server that the operator did not allow."""


# --- the token ------------------------------------------------------------------------------

def expected_token() -> str | None:
    """The token this server wants, or None when it serves without one."""
    return os.environ.get(TOKEN_ENV) or None


def _fingerprint(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(given: str | None, token: str) -> bool:
    """``given`` is ``token``, compared in constant time."""
    return given is not None and hmac.compare_digest(given.encode(), token.encode())


def admitted() -> bool:
    """Whether this browser tab may see the dashboard. Without a token it always may;
    otherwise once it has shown the token (the URL's ``?token=`` or the prompt), which the
    session remembers. Until then the page shows only the prompt and this returns False:
    the caller renders nothing else, loads no model and reads no file."""
    token = expected_token()
    if token is None:
        return True
    if st.session_state.get(_ADMITTED) == _fingerprint(token):
        return True
    if token_matches(st.query_params.get("token"), token):
        st.session_state[_ADMITTED] = _fingerprint(token)
        return True
    st.info("This dashboard needs its access token. Open the link printed when the server "
            "started (it ends in `?token=…`), or paste the token here.")
    with st.form("token_form"):
        typed = st.text_input("Token", type="password", key="token_prompt")
        sent = st.form_submit_button("Open the dashboard")
    if sent:
        if token_matches(typed.strip(), token):
            st.session_state[_ADMITTED] = _fingerprint(token)
            st.rerun()
        st.error("That is not this dashboard's token.")
    elif st.query_params.get("token"):
        st.error("The token in this link is not this dashboard's token.")
    return False


# --- code and paths -------------------------------------------------------------------------

def code_allowed() -> bool:
    return os.environ.get(ALLOW_CODE_ENV, "").strip().lower() in ("1", "true", "yes")


def allowed_roots() -> list[Path]:
    """The folders typed paths may point into, resolved: ``./runs``, the vistool cache and
    every folder in ``VISTOOL_DASHBOARD_ALLOW_PATHS``."""
    roots = [Path("runs"), cache_dir()]
    roots += [Path(p) for p in os.environ.get(ALLOW_PATHS_ENV, "").split(os.pathsep) if p]
    found: list[Path] = []
    for root in roots:
        resolved = root.expanduser().resolve()
        if resolved not in found:
            found.append(resolved)
    return found


def inside(path: str | os.PathLike, roots: Iterable[Path]) -> bool:
    """Whether ``path``, with ``~``, ``..`` and symlinks resolved, lies in one of ``roots``."""
    resolved = Path(path).expanduser().resolve()
    return any(resolved == root or resolved.is_relative_to(root) for root in roots)


def remember_upload(path: Path) -> None:
    """An upload this session saved: the page may name it although it lies elsewhere."""
    st.session_state.setdefault(_UPLOADED, set()).add(str(path))


def _uploaded(text: str) -> bool:
    return text in st.session_state.get(_UPLOADED, set())


def check_path(text: str, what: str) -> None:
    """Raise AccessError unless the typed path ``text`` (``what`` names the box) resolves
    inside the allowed roots or is one of this session's uploads."""
    roots = allowed_roots()
    if _uploaded(text) or inside(text, roots):
        return
    raise AccessError(
        f"{what} {text!r} is outside the folders this dashboard may read "
        f"({', '.join(str(r) for r in roots)}); put the file in one of them or upload it, "
        "or ask whoever started the dashboard to allow its folder (the allow-path option of "
        f"'vistool dashboard', or {ALLOW_PATHS_ENV})")


def is_code(spec: str) -> bool:
    """Whether ``vistool.load_model`` would import code for ``spec`` (``file.py:factory``
    or ``package.module:factory``)."""
    return ":" in spec


def check_model(spec: str, operator: str) -> None:
    """Raise AccessError when the Model box names code or a file the page may not use.
    ``operator`` is the model the server was started with, which is always allowed."""
    if spec == operator:
        return
    if is_code(spec):
        if code_allowed():
            return
        raise AccessError(
            f"{spec!r} names Python code on the server, which this dashboard does not run "
            "when it is typed into the page; pick a model from the list, type a torchvision "
            "or book model name, or upload a checkpoint (whoever started the dashboard can "
            "allow code with the allow-code option of 'vistool dashboard', or "
            f"{ALLOW_CODE_ENV}=1)")
    if Path(spec).suffix in CHECKPOINT_SUFFIXES or os.sep in spec or "/" in spec:
        check_path(spec, "the model file")


def check_weights(weights: str, operator: str) -> None:
    """Raise AccessError when the Weights box names a file the page may not read."""
    if weights in ("default", "none", operator):
        return
    check_path(weights, "the weights file")
