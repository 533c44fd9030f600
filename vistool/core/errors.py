"""The exceptions vistool raises for user mistakes.

Every message says what was wrong and what to do; the CLI prints it on one line and
exits with status 2.

Messages name the library's parameters, never one face's controls: a parameter is written in
backquotes, alone (`` `layer` ``) or with a value (`` `octaves=4` ``, `` `device='cpu'` ``,
`` `weights=FILE` ``, an upper-case value standing for any). ``str(error)`` shows that, which
reads as the Python call; each face rewrites it with :func:`name_parameters` in its own
terms: the CLI as its flags (``--octaves 4``), the dashboard as its widgets (the Octaves
slider).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable

#: A parameter in a message: `` `name` `` or `` `name=value` ``.
PARAMETER = re.compile(r"`(?P<name>[a-z][a-z0-9_]*)(?:=(?P<value>[^`]*))?`")


class VistoolError(Exception):
    """Base class of every error caused by the user's input rather than a bug."""


class ImageError(VistoolError):
    """An image could not be read or is not usable."""


class ModelError(VistoolError):
    """A model specification could not be resolved or built."""


class WeightsError(ModelError):
    """Pretrained weights could not be found or downloaded."""


class CheckpointError(ModelError):
    """A checkpoint is missing, corrupt or does not match the model."""


class DataError(VistoolError):
    """A dataset is missing, empty or unusable."""


class LayerError(VistoolError, KeyError):
    """A layer name does not exist in the model."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class TargetError(VistoolError, ValueError):
    """A target class index or name is invalid."""


class VistoolWarning(UserWarning):
    """Something the user should know about a run that still goes on (e.g. random weights)."""


class RandomWeightsWarning(VistoolWarning):
    """A model runs with random weights where trained ones were asked for or expected."""


class ConstantMapWarning(UserWarning):
    """An explanation map was constant (e.g. all gradients zero) and is returned as zeros."""


def closest(name: str, candidates: Iterable[str], n: int = 5) -> list[str]:
    """The up to ``n`` candidates closest to ``name`` (difflib ratio), best first."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=n, cutoff=0.5)
    if not found:
        found = [c for c in candidates if name and (name in c or c in name)][:n]
    return found


def suggestion(name: str, candidates: Iterable[str], what: str) -> str:
    """A ' did you mean ...?' clause, or a hint to list the valid names."""
    found = closest(name, candidates)
    if found:
        return "; did you mean " + ", ".join(repr(f) for f in found) + "?"
    return f"; list the valid {what}"


def name_parameters(message: str, render: Callable[[str, str | None], str | None]) -> str:
    """``message`` with each parameter (`` `name` ``, `` `name=value` ``) replaced by
    ``render(name, value)``, the value without Python's quotes (``'cpu'`` -> ``cpu``; None
    when the parameter has none); a parameter for which ``render`` returns None is left as
    written."""
    def replace(match: re.Match) -> str:
        value = match["value"]
        if value is not None and len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        named = render(match["name"], value)
        return match[0] if named is None else named

    return PARAMETER.sub(replace, message)
