"""The ``vistool`` command line: parse, call the library, render, save.

One module per command; each has ``add_parser(subparsers)`` (which sets ``func``) and
imports torch only when it runs, so ``vistool --help`` answers at once. Adding a command
is one new module and one entry in ``COMMANDS``.

User mistakes (a missing image, an unknown layer, a mismatched checkpoint ...) print one
line ``vistool: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from ..core.errors import VistoolError

__all__ = ["COMMANDS", "EXIT_USAGE", "build_parser", "main"]

EXIT_USAGE = 2
COMMANDS = (
    "models", "layers", "activations", "gradcam", "attribute", "filters", "train", "dashboard",
    "style",
    "deepdream",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vistool`` command (all subcommands)."""
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="vistool", description="Make trained convolutional networks explain themselves.")
    parser.add_argument("--version", action="version", version=f"vistool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vistool`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VistoolError as exc:
        message = " ".join(str(exc).split())
        print(f"vistool: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("vistool: interrupted", file=sys.stderr)
        return 130
