"""Presenting an evaluation: the Markdown table and the chart panels, shared by
``vistool evaluate`` and the dashboard's Evaluate tab."""

from __future__ import annotations

from .names import HIGHER_IS_BETTER
from .suite import Evaluation

__all__ = ["curve_panels", "markdown_table", "sanity_panels"]


def _cell(stats: dict) -> str:
    if stats["mean"] is None:
        return "n/a"
    lo, hi = stats["ci95"]
    return f"{stats['mean']:.3f} ± {stats['std']:.3f} [{lo:.3f}, {hi:.3f}]"


def markdown_table(summary: dict, metrics: list[str]) -> str:
    """Methods as rows, metrics as columns (↑ higher is better, ↓ lower): mean ± std
    [95% bootstrap interval], from :meth:`Evaluation.summary`."""
    header = "| method | " + " | ".join(
        f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}" for m in metrics) + " |"
    lines = [header, "|" + "---|" * (len(metrics) + 1)]
    for method, values in summary["methods"].items():
        lines.append(f"| {method} | " + " | ".join(_cell(values[m]) for m in metrics) + " |")
    return "\n".join(lines)


def curve_panels(ev: Evaluation) -> list[dict]:
    """One :func:`vistool.drawing.line_chart` panel per perturbation curve measured: the
    mean curve of each method."""
    panels = []
    for mode in ("deletion", "insertion", "road-morf", "road-lerf"):
        series = {method: (curves[mode].fractions.cpu(), curves[mode].scores.mean(0).cpu())
                  for method, curves in ev.curves.items() if mode in curves}
        if series:
            panels.append({"title": mode, "xlabel": "share of pixels perturbed",
                           "ylabel": "probability of the target", "series": series,
                           "ylim": (0, 1.02)})
    return panels


def sanity_panels(ev: Evaluation) -> list[dict]:
    """Spearman and SSIM with the original maps at each step of the sanity check."""
    layers = next(iter(ev.sanity.values())).layers
    ticks = (list(range(len(layers))), layers)
    return [{"title": f"{what} with the original map", "xlabel": "randomised down to",
             "ylabel": what, "xticks": ticks,
             "series": {m: (list(range(len(r.layers))), getattr(r, what).nanmean(1).cpu())
                        for m, r in ev.sanity.items()}}
            for what in ("spearman", "ssim")]
