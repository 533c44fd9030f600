"""The exceptions vistool raises for user mistakes.

Every message says what was wrong and what to do; the CLI prints it on one line and
exits with status 2.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


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
