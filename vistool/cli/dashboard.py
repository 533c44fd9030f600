"""``vistool dashboard``: serve the Streamlit dashboard."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("dashboard", help="open the Streamlit dashboard",
                       description="Start the Streamlit dashboard (layers, activations ...).")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")
    p.add_argument("--headless", action="store_true",
                   help="do not open a browser (for servers)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dashboard

    app = Path(dashboard.__file__).with_name("app.py")
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port",
               str(args.port), "--server.headless", "true" if args.headless else "false",
               "--browser.gatherUsageStats", "false"]
    return subprocess.call(command)
