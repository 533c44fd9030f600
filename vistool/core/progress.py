"""Progress of long work: a tqdm bar on stderr, nothing, or a caller's function (the
dashboard's progress bar), behind one interface.

Functions that take ``progress`` accept ``True`` (a tqdm bar on stderr when stderr is a
terminal; logs and pipes get none), ``False`` (none) or
a callable ``report(done, total, image)``: called after every unit of work with ``image``
None, and with an intermediate result (N, C, H, W) in [0, 1] where the work has one to show.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:  # annotations only: the CLI imports this module without torch
    import torch

__all__ = ["Progress", "Reporter", "bar_disable", "progress_bar", "show"]

Progress = bool | Callable[[int, int, "torch.Tensor | None"], None]


class Reporter:
    """A tqdm-like bar that calls ``report(done, total, image)``."""

    def __init__(self, total: int, report: Callable[[int, int, torch.Tensor | None], None]):
        self.total, self.n, self.report = total, 0, report

    def update(self, n: int = 1) -> None:
        self.n += n
        self.report(self.n, self.total, None)

    def show(self, image: torch.Tensor) -> None:
        self.report(self.n, self.total, image.detach())

    def close(self) -> None:
        """Nothing to close (tqdm's interface)."""


def bar_disable(progress: object) -> bool | None:
    """tqdm's ``disable`` for a bar that ``progress`` asks for: True (no bar) when it is
    falsy, else None, which tqdm reads as "a bar only when its stream is a terminal": a
    redirected log gets no carriage-return updates."""
    return None if progress else True


def progress_bar(total: int, desc: str, progress: Progress) -> tqdm | Reporter:
    """A bar over ``total`` units: tqdm on stderr for True (when stderr is a terminal),
    disabled for False, or a :class:`Reporter` for a callable."""
    if callable(progress):
        return Reporter(total, progress)
    return tqdm(total=total, desc=desc, disable=bar_disable(progress), leave=False)


def show(bar: tqdm | Reporter, image: torch.Tensor) -> None:
    """Pass an intermediate image to a caller's progress function (tqdm bars ignore it)."""
    if isinstance(bar, Reporter):
        bar.show(image)
