"""``vistool dashboard``: serve the Streamlit dashboard, safely by default.

It listens on 127.0.0.1 unless ``--host`` says otherwise and, as Jupyter does, wants a token:
a random one per start (or ``--token T`` / ``$VISTOOL_DASHBOARD_TOKEN``), printed in the URL to
open; ``--no-token`` serves without one. The page may name no code and read no path outside
``./runs``, the vistool cache and the ``--allow-path`` folders unless the operator allows it
(``--allow-code``); the ``--model``/``--checkpoint`` given here are always allowed. The
settings reach the app in environment variables (``dashboard/security.py`` reads them) and
Streamlit's own flags.

``streamlit run`` runs in this process (Streamlit's own command line, which starts the
server with ``streamlit.web.bootstrap``), so there is no child process: SIGTERM or SIGINT
(Ctrl-C) stops the server, frees the port and ends ``vistool``.
"""

from __future__ import annotations

import argparse
import http.client
import math
import os
import secrets
import sys
import threading
import time
from pathlib import Path

from ..core.errors import VistoolError

APP_ARGUMENTS = ("model", "checkpoint")
TOKEN_ENV = "VISTOOL_DASHBOARD_TOKEN"
ALLOW_CODE_ENV = "VISTOOL_DASHBOARD_ALLOW_CODE"
ALLOW_PATHS_ENV = "VISTOOL_DASHBOARD_ALLOW_PATHS"
WILDCARDS = ("0.0.0.0", "::", "")  # every interface


def add_parser(sub) -> None:
    p = sub.add_parser(
        "dashboard", help="open the Streamlit dashboard",
        description="Serve the Streamlit dashboard (layers, activations, filters, class "
                    "activation maps, DeepDream, style transfer, evaluation, generative models) "
                    "in this process; SIGTERM or Ctrl-C stops it. It listens on 127.0.0.1 only "
                    "(--host to change) and asks for a token, printed at start-up in the URL "
                    "to open (--token, --no-token). The page may not name Python code "
                    "(--allow-code) nor read files outside ./runs, the vistool cache and "
                    "--allow-path folders; uploads always work. --model and --checkpoint reach "
                    "the app as its script arguments, so the same start is "
                    "'streamlit run dashboard/app.py -- --model M --checkpoint F' (with the "
                    f"settings in {TOKEN_ENV}, {ALLOW_CODE_ENV}=1 and {ALLOW_PATHS_ENV}).")
    p.add_argument("--model", "-m", metavar="M",
                   help="the model the sidebar opens on: torchvision name, book model, trainers "
                        "checkpoint or file.py:factory (default: shapes_cnn with the newest "
                        "trained checkpoint that 'make demo' or 'vistool train shapes-cnn' "
                        "wrote, else random weights, which the page says); allowed even "
                        "without --allow-code or --allow-path")
    p.add_argument("--checkpoint", metavar="F",
                   help="alone: the trainers checkpoint to open (it rebuilds its own "
                        "architecture); with --model: the weights of that model")
    p.add_argument("--host", metavar="ADDR", default="127.0.0.1",
                   help="address to listen on (default: %(default)s, this machine only; "
                        "0.0.0.0: every interface, for a shared server, best with the token "
                        "and behind a reverse proxy)")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")
    token = p.add_mutually_exclusive_group()
    token.add_argument("--token", metavar="T",
                       help=f"the access token the page asks for (default: ${TOKEN_ENV}, else "
                            "a random one per start); the start-up line prints the URL with it")
    token.add_argument("--no-token", action="store_true",
                       help="serve without a token: anyone who reaches the port uses the "
                            "dashboard")
    p.add_argument("--allow-path", action="append", default=[], metavar="DIR",
                   help="a folder whose files the page may name (checkpoints in the Model and "
                        "Weights boxes, Evaluate's image and masks folders), besides ./runs and "
                        "the vistool cache; repeat for more")
    p.add_argument("--allow-code", action="store_true",
                   help="let the page load file.py:factory and module:factory models, which "
                        "runs that Python code on this machine: only for users you trust "
                        "with a shell here")
    p.add_argument("--headless", action="store_true",
                   help="do not open a browser (for servers)")
    p.set_defaults(func=run)


def app_arguments(args: argparse.Namespace) -> list[str]:
    """The script arguments of ``dashboard/app.py`` for ``--model`` and ``--checkpoint``."""
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise VistoolError(f"checkpoint {args.checkpoint!r} does not exist; check the path")
    return [part for name in APP_ARGUMENTS if getattr(args, name)
            for part in (f"--{name}", getattr(args, name))]


def access_token(args: argparse.Namespace) -> str | None:
    """The token the page will ask for: ``--token``, ``$VISTOOL_DASHBOARD_TOKEN``, else a
    new random one; None with ``--no-token``."""
    if args.no_token:
        return None
    token = args.token if args.token is not None else os.environ.get(TOKEN_ENV)
    if token is not None and not token.strip():
        raise VistoolError("the dashboard token is empty; give a non-empty --token, or "
                           "--no-token to serve without one")
    return token or secrets.token_urlsafe(32)


def allowed_paths(args: argparse.Namespace) -> list[str]:
    """The ``--allow-path`` folders, absolute and resolved; each must exist."""
    found = []
    for folder in args.allow_path:
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise VistoolError(f"--allow-path {folder!r} is not a folder; give an existing "
                               "directory")
        found.append(str(path.resolve()))
    return found


def url_of(host: str, port: int, token: str | None) -> str:
    """The URL to open: a wildcard host is reached on this machine at 127.0.0.1."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={token}" if token else "")


def start_line(host: str, port: int, token: str | None) -> str:
    """What ``vistool dashboard`` prints first: where it listens and the URL to open."""
    where = ("every interface: anyone who can reach this machine" if host in WILDCARDS else
             "this machine only" if host in ("127.0.0.1", "localhost", "::1") else host)
    access = ("a token is required (it is in the URL; keep it private)" if token else
              "NO token: anyone who can reach the port uses the dashboard")
    return (f"vistool dashboard: listening on {host or '0.0.0.0'}:{port} ({where}); {access}; "
            f"open {url_of(host, port, token)}")


def streamlit_flags(args: argparse.Namespace) -> list[str]:
    """Streamlit's options: the address, no Deploy button, no usage statistics, no file
    watcher, no welcome banner (the start-up line gives the URL), no browser of its own,
    and Streamlit's upload limit at the app's (its own endpoint takes uploads from any
    session, also one that has not shown the token)."""
    upload_mb = max(1, math.ceil(float(os.environ.get("VISTOOL_DASHBOARD_MAX_UPLOAD_MB",
                                                      "20"))))
    return ["--server.address", args.host, "--server.port", str(args.port),
            "--server.headless", "true", "--server.fileWatcherType", "none",
            "--client.toolbarMode", "minimal", "--browser.gatherUsageStats", "false",
            "--logger.hideWelcomeMessage", "true", "--server.maxUploadSize", str(upload_mb)]


def _open_browser_when_up(url: str, port: int, timeout: float = 60) -> None:
    """Open ``url`` in a browser once the server answers (Streamlit's own would lack the
    token)."""
    def wait_and_open() -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            try:
                conn.request("GET", "/_stcore/health")
                if conn.getresponse().status == 200:
                    import webbrowser

                    webbrowser.open(url)
                    return
            except OSError:
                time.sleep(0.5)
            finally:
                conn.close()

    threading.Thread(target=wait_and_open, daemon=True).start()


def run(args: argparse.Namespace) -> int:
    script_args = app_arguments(args)
    token = access_token(args)
    paths = allowed_paths(args)
    from streamlit.web import cli as streamlit_cli

    import dashboard

    app = str(Path(dashboard.__file__).with_name("app.py"))
    # The app (in this process) reads its settings from the environment.
    if token is None:
        os.environ.pop(TOKEN_ENV, None)
    else:
        os.environ[TOKEN_ENV] = token
    os.environ[ALLOW_CODE_ENV] = "1" if args.allow_code else "0"
    os.environ[ALLOW_PATHS_ENV] = os.pathsep.join(paths)
    print(start_line(args.host, args.port, token), flush=True)
    if token is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        print("vistool: warning: serving beyond this machine without a token",
              file=sys.stderr, flush=True)
    if not args.headless and args.host in (*WILDCARDS, "127.0.0.1", "localhost", "::1"):
        _open_browser_when_up(url_of(args.host, args.port, token), args.port)
    # `streamlit run` itself, in this process: config files and STREAMLIT_* variables apply
    # as they do there (the flags above win), and its signal handlers stop the server.
    streamlit_cli.main(["run", app, *streamlit_flags(args), "--", *script_args],
                       prog_name="streamlit", standalone_mode=False)
    return 0
