"""Side-by-side timing shared by the ``bench_*.py`` scripts."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def timeit(cases: dict[str, Callable[[], object]], repeats: int,
           device: torch.device) -> dict[str, float]:
    """Median seconds of each case: one warm-up call each, then ``repeats`` interleaved
    rounds (so drift in the machine's speed hits every case alike)."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times: dict[str, list[float]] = {name: [] for name in cases}
    for fn in cases.values():
        fn()
    for _ in range(repeats):
        for name, fn in cases.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def report(title: str, times: dict[str, float], base: str) -> None:
    """Print each case's median in ms and its ratio to ``base``."""
    print(f"\n{title}")
    for name, value in times.items():
        print(f"  {name:<34} {value * 1000:10.1f} ms   {value / times[base]:6.3f}x {base}")
