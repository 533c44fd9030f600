"""DeepDream speed, quality and memory, vistool vs torch-dreams, side by side in one run (CPU).

Speed and quality: vgg16 (random weights, seed 0), layer ``features.28``, a photograph
(scikit-image's ``chelsea``) resized to 149x224 (75x112 with ``--quick``), the same number
of gradient steps, one octave (torch-dreams has none):

* vistool ``deepdream(loaded, image, "features.28", octaves=1, steps=S)`` with its defaults
  (lr 0.01 on the gradient divided by its mean absolute value, jitter 32, tile 512);
* torch-dreams 4.0.0 ``Dreamer.render`` from ``CustomImageParam(image)`` with the
  objective ``-mean(features.28 ** 2)`` as ``custom_func``, at its documented settings for
  a custom image (lr 3e-4, grad_clip 0.1, weight_decay 0.1) and at its ``render``
  defaults (lr 9e-3, grad_clip 1), both with its default random rotation (15°) but no
  random rescaling (``scale_min = scale_max = 1``), so that every step sees 149x224 as
  vistool's does. torch-dreams feeds its image parameter to the model unnormalised, so it
  gets the model behind an ImageNet ``Normalize`` (the same network on the same pixels);
* vistool again with lr 0.08, a step that changes the photo about as much as torch-dreams'
  render defaults do (its objective is not the goal's: it shows objective per change);
* the floor: ``steps`` forwards and backwards of ``vgg16.features[:29]`` (frozen, input
  gradient only) on the photo, the mean squared output, nothing else.

Speed is steps per second, the median of interleaved rounds (a, b, c, a, b, c ...) after
a warm-up; ratios are of medians, with the range of the per-round ratios. Quality is the
dream objective of each final image measured the same way for both: the mean squared
activation of ``features.28`` of the image in [0, 1], normalised with ImageNet's mean/std,
as it is (vistool's ``evaluate``), and how far each final image moved from the photo (mean
absolute pixel change in [0, 1]).

Memory: the peak resident memory (``VmHWM``, reset with ``/proc/self/clear_refs`` once the
model is loaded, so loading's own peak does not hide the dream's; Linux) of a fresh process
that dreams one step, one octave, of a 2048² image with ``tile=512`` against a 512² image
(1024² with tiles of 256 against 256² with ``--quick``); also each peak above the memory
the process held before dreaming (model and image loaded).

torch-dreams is not installed into the project's environment: it goes in ``.venv/peers``
(``pip install --no-deps --target .venv/peers torch-dreams==4.0.0``; it imports cv2, which
the project's opencv-python-headless provides), and only this script puts that folder on
``sys.path``. A missing torch-dreams is reported and its cases skipped.
"""

from __future__ import annotations

import argparse
import copy
import random
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

import vistool
from vistool.synthesize import objectives as vobj
from vistool.synthesize.deepdream import deepdream
from vistool.synthesize.optimize import evaluate

PEERS = Path(__file__).resolve().parent.parent / ".venv" / "peers"
LAYER = "features.28"
BASE, LARGE = "vistool deepdream", "vistool deepdream (lr 0.08)"
FLOOR = "floor (features[:29] fwd+bwd)"
TD_SETTINGS = {"torch-dreams (custom-image settings)": {"lr": 3e-4, "grad_clip": 0.1,
                                                        "weight_decay": 0.1},
               "torch-dreams (render defaults)": {"lr": 9e-3, "grad_clip": 1.0,
                                                  "weight_decay": 0.0}}


def import_torch_dreams():
    """torch-dreams from ``.venv/peers`` (put first on ``sys.path`` here only), or None."""
    if PEERS.is_dir() and str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        import torch_dreams
    except ImportError as error:
        print(f"torch-dreams not available ({error}); install it with `.venv/bin/python -m pip "
              f"install --no-deps --target {PEERS} torch-dreams==4.0.0`. Skipping its cases.")
        return None
    return torch_dreams


def photo(size: tuple[int, int]) -> torch.Tensor:
    """scikit-image's ``chelsea`` as (1, 3, H, W) in [0, 1], resized to ``size``."""
    from skimage import data

    image = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    return torch.nn.functional.interpolate(image, size=size, mode="bilinear",
                                           antialias=True, align_corners=False).clamp(0, 1)


def torch_dreams_case(td, loaded, image: torch.Tensor, steps: int, seed: int,
                      settings: dict, images: dict, name: str) -> Callable[[], None]:
    """torch-dreams' ``render`` from the photograph; leaves its final image in ``images``."""
    model = nn.Sequential(v2.Normalize(loaded.mean, loaded.std), copy.deepcopy(loaded.model))
    dreamer = td.Dreamer(model, quiet=True, device="cpu")
    layer = model[1].features[28]

    def run():
        random.seed(seed)  # torch-dreams' random resize draws from python's random
        torch.manual_seed(seed)  # and torchvision's RandomAffine from torch's
        param = td.CustomImageParam(image=image.clone(), device="cpu")
        done = dreamer.render(layers=[layer], image_parameter=param, iters=steps,
                              scale_max=1.0, scale_min=1.0,
                              custom_func=lambda outputs: -outputs[0].pow(2).mean(), **settings)
        images[name] = done.to_nchw_tensor()

    return run


def vistool_case(loaded, image: torch.Tensor, steps: int, seed: int, lr: float,
                 images: dict, name: str) -> Callable[[], None]:
    def run():
        images[name] = deepdream(loaded, image, LAYER, octaves=1, steps=steps, lr=lr,
                                 seed=seed).images

    return run


def floor_case(loaded, image: torch.Tensor, steps: int) -> Callable[[], None]:
    """``steps`` forwards and backwards of ``features[:29]`` (frozen), input gradient only."""
    net = copy.deepcopy(loaded.model.features[:29]).requires_grad_(False).eval()
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in (loaded.mean, loaded.std))

    def run():
        for _ in range(steps):
            x = image.clone().requires_grad_(True)
            torch.autograd.grad(net((x - mean) / std).pow(2).mean(), x)

    return run


def run_rounds(cases: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    for name, fn in cases.items():
        start = time.perf_counter()
        fn()
        print(f"  warm-up {name}: {time.perf_counter() - start:.1f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {values[-1]:.1f} s" for name, values in times.items()), flush=True)
    return times


def speed_and_quality(loaded, td, size: tuple[int, int], steps: int, rounds: int,
                      seed: int) -> None:
    image = photo(size)
    images: dict[str, torch.Tensor] = {}
    cases = {BASE: vistool_case(loaded, image, steps, seed, 0.01, images, BASE)}
    for name, settings in (TD_SETTINGS.items() if td else ()):
        cases[name] = torch_dreams_case(td, loaded, image, steps, seed, settings, images, name)
    cases[LARGE] = vistool_case(loaded, image, steps, seed, 0.08, images, LARGE)
    cases[FLOOR] = floor_case(loaded, image, steps)
    print(f"\n{rounds} interleaved rounds of {steps} steps at {size[0]}x{size[1]}:")
    times = run_rounds(cases, rounds)
    start = evaluate(loaded.model, vobj.deepdream(LAYER), image, loaded.mean, loaded.std)
    print(f"\n  {'':<38} {'median':>9} {'steps/s':>9} {'objective':>10} {'mean |change|':>14}"
          f"   (the photo's objective: {start.item():.4f})")
    scores = {name: evaluate(loaded.model, vobj.deepdream(LAYER), found, loaded.mean,
                             loaded.std).item() for name, found in images.items()}
    for name, values in times.items():
        median = statistics.median(values)
        quality = (f"{scores[name]:10.4f} {(images[name] - image).abs().mean():14.4f}"
                   if name in images else "")
        print(f"  {name:<38} {median:7.2f} s {steps / median:9.3f} {quality}")
    for name in times:
        if name.startswith("torch-dreams"):
            per_round = sorted(t / v for t, v in zip(times[name], times[BASE]))
            ratio = statistics.median(times[name]) / statistics.median(times[BASE])
            print(f"  vs {name}: speed {ratio:.2f}x (rounds {per_round[0]:.2f}-"
                  f"{per_round[-1]:.2f}x; goal 1.5x: {'met' if ratio >= 1.5 else 'short'}); "
                  f"objective {scores[BASE]:.4f} vs {scores[name]:.4f} (goal higher: "
                  f"{'met' if scores[BASE] > scores[name] else 'short'})")
    floor = statistics.median(times[BASE]) / statistics.median(times[FLOOR])
    print(f"  time vistool / floor: {floor:.2f}x")


def _status_mib(field: str) -> float:
    """A ``VmRSS``/``VmHWM`` line of ``/proc/self/status`` in MiB (Linux)."""
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024


def memory_child(size: int, tile: int) -> None:
    """In a fresh process: load vgg16, reset the peak (``/proc/self/clear_refs``), dream one
    step of a ``size``² image; print the resident memory before and its peak during, MiB."""
    loaded = vistool.load_model("vgg16", weights="none", device="cpu")
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    Path("/proc/self/clear_refs").write_text("5")  # the peak so far -> the current RSS
    before = _status_mib("VmRSS")
    deepdream(loaded, image, LAYER, octaves=1, steps=1, tile=tile)
    print(f"{before:.1f} {_status_mib('VmHWM'):.1f}")


def memory(quick: bool) -> None:
    big, tile = (1024, 256) if quick else (2048, 512)
    peaks = {}
    for size in (tile, big):
        done = subprocess.run([sys.executable, __file__, "--memory-child", str(size),
                               "--tile", str(tile)], capture_output=True, text=True, check=True)
        peaks[size] = [float(v) for v in done.stdout.split()]
    (small_before, small), (large_before, large) = peaks[tile], peaks[big]
    print(f"\nPeak resident memory (VmHWM, fresh process, vgg16 up to {LAYER}, one octave, "
          f"1 step, tiles {tile}):")
    for size, (before, after) in peaks.items():
        print(f"  {size}x{size}: peak {after:7.1f} MiB, {after - before:7.1f} MiB above the "
              f"{before:.1f} MiB held before dreaming (model and image loaded)")
    ratio = large / small
    print(f"  {big}² / {tile}²: peak {ratio:.2f}x (goal <= 1.2x: "
          f"{'met' if ratio <= 1.2 else 'short'}); above what was held before: "
          f"{(large - large_before) / (small - small_before):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="gradient steps "
                                                              "(default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timed rounds after a warm-up (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 75x112, 3 steps, 1 round, 1024² memory run")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--tile", type=int, default=512, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, args.tile)
        return
    steps, rounds = (3, 1) if args.quick else (args.steps, args.rounds)
    size = (75, 112) if args.quick else (149, 224)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    loaded = vistool.load_model("vgg16", weights="none", device="cpu")
    td = import_torch_dreams()
    print(f"DeepDream, vgg16 (random weights, seed {args.seed}) {LAYER}, one octave, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}"
          + (f", torch-dreams {td.__version__}" if td else ""))
    speed_and_quality(loaded, td, size, steps, rounds, args.seed)
    memory(args.quick)


if __name__ == "__main__":
    main()
