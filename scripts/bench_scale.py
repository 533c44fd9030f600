"""Explaining a folder: streamed (``vistool gradcam DIR``) vs a per-file loop, side by side.

Both run resnet18 (``--weights none``) Grad-CAM on CPU over the same generated 224² JPEGs,
each case in its own process so that its peak memory (the largest resident set of the
process and its DataLoader workers) is its own:

* streamed: ``vistool gradcam --model resnet18 --weights none --no-images --workers 2
  --batch-size 16 DIR`` (images read by 2 loader processes, batched, one index row each);
* per-file loop: for each file ``vistool.load_image``, ``loaded.preprocess``,
  ``vistool.explain`` (one image at a time, what a script over ``explain`` does).

Images/s are medians over interleaved rounds (streamed first in odd rounds); the ratio is
streamed / loop, end to end (each process from its start: importing torch and building the
model, about 5 s here, included) and in the steady state (each case's own count from its
first image to its last: the streamed run's summary line, the loop's own timer). Then the
streamed run over 4x as many images, to show its memory stays flat. ``--images`` and
``--rounds`` shrink it for a first look.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

LOOP = """
import sys, pathlib, time, torch, vistool
torch.manual_seed(0)
loaded = vistool.load_model("resnet18", weights="none", device="cpu")
paths = sorted(pathlib.Path(sys.argv[1]).glob("*.jpg"))
start = time.perf_counter()
for path in paths:
    vistool.explain(loaded, loaded.preprocess(vistool.load_image(path)), "gradcam")
print(f"{len(paths) / (time.perf_counter() - start):.1f} images/s")
"""


def make_images(folder: Path, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        path = folder / f"img{i:05d}.jpg"
        if not path.exists():
            Image.fromarray(rng.integers(0, 255, (224, 224, 3), dtype=np.uint8)).save(path)


def timed(argv: list[str]) -> tuple[float, float]:
    """Seconds of one child process running ``argv``, and the images/s it reports (its
    last line's ``N images/s``: from its first image to its last)."""
    start = time.perf_counter()
    done = subprocess.run(argv, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    return seconds, float(re.findall(r"([0-9.]+) images/s", done.stdout)[-1])


def streamed(folder: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "vistool", "gradcam", "--model", "resnet18", "--weights",
            "none", "--no-images", "--workers", "2", "--batch-size", "16", "--out", str(out),
            str(folder)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=512, help="(default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="(default: %(default)s)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        small, large = root / "small", root / "large"
        make_images(small, args.images)
        make_images(large, 4 * args.images)
        print(f"resnet18 Grad-CAM, {args.images} images of 224², CPU, {os.cpu_count()} cores; "
              f"load average {os.getloadavg()}", flush=True)
        cases = {"streamed": lambda r: streamed(small, root / f"out{r}"),
                 "per-file loop": lambda r: [sys.executable, "-c", LOOP, str(small)]}
        rates: dict[str, list[float]] = {name: [] for name in cases}
        steady: dict[str, list[float]] = {name: [] for name in cases}
        for r in range(args.rounds):
            for name in (list(cases) if r % 2 == 0 else list(cases)[::-1]):
                seconds, own = timed(cases[name](r))
                rates[name].append(args.images / seconds)
                steady[name].append(own)
                print(f"  round {r + 1}: {name} {rates[name][-1]:.1f} images/s end to end, "
                      f"{own:.1f} in the steady state", flush=True)
        for label, table in (("end to end", rates), ("steady state", steady)):
            ours, theirs = (statistics.median(table[n]) for n in cases)
            print(f"{label}: streamed {ours:.1f} images/s, per-file loop {theirs:.1f} "
                  f"images/s: {ours / theirs:.2f}x (goal >= 1.5x)")
        # Peaks: each measured in a fresh process of its own (ru_maxrss of children is a max).
        peaks = {}
        for name, argv in (("per-file loop", cases["per-file loop"](99)),
                           ("streamed", streamed(small, root / "peak-small")),
                           ("streamed 4x", streamed(large, root / "peak-large"))):
            probe = [sys.executable, "-c", "import resource, subprocess, sys; "
                     "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, "
                     "stderr=subprocess.DEVNULL); print(resource.getrusage("
                     "resource.RUSAGE_CHILDREN).ru_maxrss)", *argv]
            peaks[name] = int(subprocess.run(probe, capture_output=True, text=True,
                                             check=True).stdout) / 1024
            print(f"  peak memory, {name}: {peaks[name]:.0f} MiB", flush=True)
        print(f"streamed over {4 * args.images} vs {args.images} images: "
              f"{peaks['streamed 4x'] / peaks['streamed']:.3f}x the peak memory (goal within "
              f"1.10x)\nload average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()
