"""The ``vistool`` command line: parse, call the library, render, save.

One module per command; each has ``add_parser(subparsers)`` (which sets ``func``) and
imports torch only when it runs, so ``vistool --help`` answers at once. Adding a command
is one new module and one entry in ``COMMANDS``.

User mistakes (a missing image, an unknown layer, a mismatched checkpoint ...) print one
line ``vistool: error: ...`` on stderr and exit with status 2, and so does an error raised
inside the model's own forward pass (a fixed-size model given another size ...): it names
the module and the options that fix it; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
from collections.abc import Sequence

from ..core.errors import VistoolError, name_parameters

__all__ = ["COMMANDS", "EXIT_USAGE", "PARAMETER_FLAGS", "build_parser", "cli_message", "main"]

EXIT_USAGE = 2
COMMANDS = (
    "models", "methods", "layers", "activations", "gradcam", "attribute", "dff", "filters",
    "invert", "train", "dashboard", "style", "deepdream", "generate", "evaluate",
)
#: The flag of each library parameter whose flag is not ``--`` and its name with dashes.
PARAMETER_FLAGS = {"spec": "--model", "final": "--out", "styles": "--style",
                   "options": "--option"}


def parameter_flag(name: str, value: str | None = None) -> str:
    """The command line's spelling of a library parameter: ``octave_scale``, ``1.4`` ->
    ``--octave-scale 1.4``."""
    flag = PARAMETER_FLAGS.get(name, "--" + name.replace("_", "-"))
    return flag if value is None else f"{flag} {value}"


def cli_message(message: object) -> str:
    """A library error or warning as the command line says it: one line, its parameters
    named as flags (`` `weights=FILE` `` -> ``--weights FILE``)."""
    return " ".join(name_parameters(str(message), parameter_flag).split())


class _Parser(argparse.ArgumentParser):
    """argparse reads ``-2,2`` or ``-1e-3`` after an option as another option ("expected one
    argument"); these parsers take every argument that starts with ``-`` and a digit (or
    ``-.`` and a digit) as a value, as users type ranges and offsets. Subcommand parsers
    are of the same class. No option of vistool looks like a number."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = re.compile(r"^-\.?\d")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vistool`` command (all subcommands)."""
    from .. import __version__

    parser = _Parser(
        prog="vistool", description="Make trained convolutional networks explain themselves.")
    parser.add_argument("--version", action="version", version=f"vistool {__version__}")
    debug = "show the full Python traceback of an error instead of its one-line summary"
    parser.add_argument("--debug", action="store_true", help=debug)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __name__).add_parser(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help=debug)
    return parser


def _failed_module(exc: BaseException) -> str | None:
    """The class of the innermost ``nn.Module`` whose forward ``exc`` came out of, or None
    when it was not raised inside a model."""
    nn = getattr(sys.modules.get("torch"), "nn", None)
    found, tb = None, exc.__traceback__
    while nn is not None and tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        if tb.tb_frame.f_code.co_name == "forward" and isinstance(owner, nn.Module):
            found = type(owner).__name__
        tb = tb.tb_next
    return found


def _model_error(args: argparse.Namespace, exc: Exception, module: str) -> str:
    first = (str(exc).strip().splitlines() or [""])[0]
    size = getattr(args, "input_size", None)
    given = f"--input-size {size}" if size else "the model's default input size"
    return (f"the model failed in its {module} module ({type(exc).__name__}: {first}) on "
            f"an input of {given}; if the model expects another size or normalisation, "
            "pass --input-size (and --mean/--std); rerun with --debug for the traceback")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vistool`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except VistoolError as exc:
        print(f"vistool: error: {cli_message(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, AssertionError, ValueError, TypeError, IndexError) as exc:
        module = None if args.debug else _failed_module(exc)
        if module is None:
            raise  # not the model's own error (a bug of vistool's): the whole traceback
        print(f"vistool: error: {_model_error(args, exc, module)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("vistool: interrupted", file=sys.stderr)
        return 130
