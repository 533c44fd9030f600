"""``vistool dashboard``: serve the Streamlit dashboard.

``streamlit run`` runs in this process (Streamlit's own command line, which starts the
server with ``streamlit.web.bootstrap``), so there is no child process: SIGTERM or SIGINT
(Ctrl-C) stops the server, frees the port and ends ``vistool``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..core.errors import VistoolError

APP_ARGUMENTS = ("model", "checkpoint")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "dashboard", help="open the Streamlit dashboard",
        description="Serve the Streamlit dashboard (layers, activations, filters, class "
                    "activation maps, DeepDream, style transfer, evaluation, generative models) "
                    "in this process; SIGTERM or Ctrl-C stops it. --model and --checkpoint "
                    "reach the app as its script arguments, so the same start is "
                    "'streamlit run dashboard/app.py -- --model M --checkpoint F'.")
    p.add_argument("--model", "-m", metavar="M",
                   help="the model the sidebar opens on: torchvision name, book model, trainers "
                        "checkpoint or file.py:factory (default: shapes_cnn with the newest "
                        "trained checkpoint that 'make demo' or 'vistool train shapes-cnn' "
                        "wrote, else random weights, which the page says)")
    p.add_argument("--checkpoint", metavar="F",
                   help="alone: the trainers checkpoint to open (it rebuilds its own "
                        "architecture); with --model: the weights of that model")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")
    p.add_argument("--headless", action="store_true",
                   help="do not open a browser (for servers)")
    p.set_defaults(func=run)


def app_arguments(args: argparse.Namespace) -> list[str]:
    """The script arguments of ``dashboard/app.py`` for ``--model`` and ``--checkpoint``."""
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise VistoolError(f"checkpoint {args.checkpoint!r} does not exist; check the path")
    return [part for name in APP_ARGUMENTS if getattr(args, name)
            for part in (f"--{name}", getattr(args, name))]


def run(args: argparse.Namespace) -> int:
    from streamlit.web import cli as streamlit_cli

    import dashboard

    app = str(Path(dashboard.__file__).with_name("app.py"))
    script_args = app_arguments(args)
    flags = ["--server.port", str(args.port), "--browser.gatherUsageStats", "false"]
    if args.headless:
        flags += ["--server.headless", "true"]
    # `streamlit run` itself, in this process: config files and STREAMLIT_* variables apply
    # as they do there, and its signal handlers stop the server.
    streamlit_cli.main(["run", app, *flags, "--", *script_args], prog_name="streamlit",
                       standalone_mode=False)
    return 0
