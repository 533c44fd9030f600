"""Feature visualisation speed and quality, vistool vs lucent, side by side in one run (CPU).

Eight channels (0-7) of vgg16 ``features.16`` (random weights, seed 0), 128² images, FFT
parameterisation with decorrelated colour, Adam lr 0.05, the same number of steps and
the standard transformations (lucent's ``standard_transforms``; vistool's ``Transforms()``):

* lucent one channel at a time: ``render_vis(model, "features_16:c")`` for each channel
  (as lucent does it: upsampled to 224², the whole network, weight gradients included);
* lucent batched: ``param.image(128, batch=8)`` and the sum of
  ``objectives.channel("features_16", c, batch=c)``;
* the floor: forward and backward (input gradient only) of ``vgg16.features[:17]`` on a
  batch of 8 random 128² images, the sum of the 8 channel means, nothing else;
* vistool ``render_filters(loaded, "features.16", range(8), size=128, steps=S,
  batch_size=8)`` (with its evaluation of the final images; its learning rate rises over
  the first quarter of the steps to 0.05, then decays on a cosine to 0.005; ReLU gradients
  redirected as lucid does), and its Adam loop alone (``vistool.synthesize.optimize.
  optimize``, same draws) with the learning rate constant at 0.05 as lucent's, which
  shows what the evaluation costs and what the schedule does to quality.

``--steps 32,64,128,256`` runs the comparison at each step count and ends with one table
of quality and speed against lucent batched (``--cases lucent,floor,vistool`` leaves out the
slow one-at-a-time lucent). ``--examples N`` also times the dataset-examples pass (the
CLI's, which saves its state after every batch, and ``vistool.top_examples``) over N JPEGs
against the model's plain forward and its forward up to the layer, through the same
DataLoader.

Speed is channel-steps per second (8 channels x S steps / seconds), the median of
interleaved rounds (a, b, c, d, a, b, ...) after a warm-up; the ratios are of medians,
with the range of the per-round ratios. Quality is the mean transform-robust activation
of the 8 final images, measured for both libraries at 128² with vistool's ``evaluate``
(8 random ``Transforms()`` per image, the same draws for both).

lucent (torch-lucent 0.1.8, which needs kornia 0.4.1) is not installed into the project's
environment: ``make bench`` puts it in ``.venv/peers`` (``pip install --no-deps
--target``), and only this script puts that folder on ``sys.path``. lucent imports
IPython only to show images in notebooks; when IPython is missing a stub stands in.
A missing lucent is reported and its cases skipped.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
import types
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

import vistool
from vistool.core.hooks import forward_until
from vistool.synthesize import objectives as vobj
from vistool.synthesize.featureviz import _generators, render_filters
from vistool.synthesize.optimize import evaluate, optimize
from vistool.synthesize.param import make_param
from vistool.synthesize.transform import Transforms

PEERS = Path(__file__).resolve().parent.parent / ".venv" / "peers"
Case = Callable[[int], None]  # runs ``steps`` steps
LOOP = "vistool optimize(), constant lr"
LAYER, LUCENT_LAYER, CHANNELS, SIZE, LR = "features.16", "features_16", list(range(8)), 128, 0.05


def import_lucent() -> types.SimpleNamespace | None:
    """lucent's modules from ``.venv/peers`` (put first on ``sys.path`` here only), or None."""
    if PEERS.is_dir() and str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    if "IPython" not in sys.modules and importlib.util.find_spec("IPython") is None:
        # lucent.misc.io.showing imports it
        stub = types.ModuleType("IPython")
        stub.display = types.ModuleType("IPython.display")
        sys.modules.setdefault("IPython", stub)
        sys.modules.setdefault("IPython.display", stub.display)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import kornia
            from lucent.optvis import objectives, param, render, transform
    except ImportError as error:
        print(f"lucent not available ({error}); run `make bench` to install it into "
              f"{PEERS}. Skipping the lucent cases.")
        return None
    return types.SimpleNamespace(objectives=objectives, param=param, render=render,
                                 transform=transform, kornia=kornia.__version__)


def drop_hooks(model: nn.Module) -> None:
    """Remove every forward hook (lucent's ``render_vis`` registers one per module and
    never removes them; left there they would pile up call after call)."""
    for module in model.modules():
        module._forward_hooks.clear()


def lucent_cases(lucent, model: nn.Module, seed: int,
                 images: dict[str, torch.Tensor]) -> dict[str, Case]:
    """lucent one channel at a time and batched, each leaving its final images in
    ``images`` as (8, 3, 128, 128) in [0, 1]."""

    def adam(params):
        return torch.optim.Adam(params, lr=LR)

    def render(objective, param_f, steps, draw_seed):
        torch.manual_seed(draw_seed)  # lucent draws the spectrum from torch's global generator
        np.random.seed(draw_seed)  # and its transformations from numpy's
        try:
            out = lucent.render.render_vis(
                model, objective, param_f, optimizer=adam,
                transforms=list(lucent.transform.standard_transforms), thresholds=(steps,),
                show_image=False, progress=False)
        finally:
            drop_hooks(model)
        return torch.from_numpy(out[-1]).permute(0, 3, 1, 2)  # NHWC numpy -> NCHW tensor

    def one_at_a_time(steps):
        images["lucent, one channel at a time"] = torch.cat([
            render(f"{LUCENT_LAYER}:{c}", lambda: lucent.param.image(SIZE), steps,
                   seed * 1000 + c) for c in CHANNELS])

    def batched(steps):
        objective = lucent.objectives.Objective.sum(
            [lucent.objectives.channel(LUCENT_LAYER, c, batch=i) for i, c in enumerate(CHANNELS)])
        images["lucent, batched"] = render(
            objective, lambda: lucent.param.image(SIZE, batch=len(CHANNELS)), steps, seed)

    return {"lucent, one channel at a time": one_at_a_time, "lucent, batched": batched}


def floor_case(model: nn.Module, seed: int) -> Case:
    """``steps`` forwards and backwards of ``features[:17]`` (frozen), input gradient only."""
    net = copy.deepcopy(model.features[:17]).requires_grad_(False).eval()
    x = torch.randn(len(CHANNELS), 3, SIZE, SIZE,
                    generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    index = torch.tensor(CHANNELS)

    def run(steps):
        for _ in range(steps):
            out = net(x)
            score = out[torch.arange(len(index)), index].mean((1, 2)).sum()
            torch.autograd.grad(score, x)

    return run


def vistool_cases(loaded, seed: int, images: dict[str, torch.Tensor]) -> dict[str, Case]:
    def full(steps):
        done = render_filters(loaded, LAYER, CHANNELS, size=SIZE, steps=steps, lr=LR,
                              seed=seed, batch_size=len(CHANNELS))
        images["vistool render_filters"] = done.images

    def loop_only(steps):  # render_filters' loop, same draws, without checks and evaluation,
        # and with the learning rate constant (render_filters decays it on a cosine)
        param = make_param("fft", (3, SIZE, SIZE), _generators(seed, CHANNELS))
        done = optimize(loaded.model, vobj.channel(LAYER, CHANNELS), param,
                        _generators(seed, CHANNELS, 1), steps, LR, Transforms(), loaded.mean,
                        loaded.std)
        images[LOOP] = done.images

    return {"vistool render_filters": full, LOOP: loop_only}


def robust_activation(loaded, images: torch.Tensor, seed: int) -> torch.Tensor:
    """(8,) the channel mean of each image, averaged over 8 random ``Transforms()`` (the same
    draws whoever made the images), at 128² on the model nobody hooked."""
    assert not any(m._forward_hooks for m in loaded.model.modules()), "leftover hooks"
    assert images.shape == (len(CHANNELS), 3, SIZE, SIZE), images.shape
    generators = [torch.Generator().manual_seed(seed * 1000 + 500 + c) for c in CHANNELS]
    return evaluate(loaded.model, vobj.channel(LAYER, CHANNELS), images.float(), loaded.mean,
                    loaded.std, Transforms(), generators, samples=8)


def check_hooks(lucent, loaded) -> None:
    """What lucent's hook on a layer sees, against vistool's capture of the same layer."""
    model = copy.deepcopy(loaded.model)
    x = torch.rand(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    xn = (x - torch.tensor(loaded.mean).view(1, 3, 1, 1)) / torch.tensor(loaded.std).view(
        1, 3, 1, 1)
    hook = lucent.render.hook_model(model, lambda: x)
    with torch.no_grad():
        model(xn)
    print("\nWhat each library's layer sees (one 128² image):")
    for index in (14, 16):
        name = f"features.{index}"
        kinds = " then ".join(type(model.features[i]).__name__ for i in (index, index + 1))
        theirs = hook(f"features_{index}")
        with torch.no_grad():
            ours = forward_until(loaded.model, xn, [name], gradients=False)[name]
        print(f"  {name} ({kinds}): lucent min {theirs.min():+.3f}, vistool min "
              f"{ours.min():+.3f}, max |lucent - relu(vistool)| "
              f"{(theirs - ours.clamp(min=0)).abs().max():.1e}")
    drop_hooks(model)


def run_rounds(cases: dict[str, Case], steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds of each case per round: a 2-step warm-up of every case, then ``rounds``
    interleaved rounds of ``steps`` steps (drift in the machine's speed hits every case)."""
    start = time.perf_counter()
    for fn in cases.values():
        fn(2)
    print(f"  warm-up (2 steps each): {time.perf_counter() - start:.0f} s", flush=True)
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn(steps)
            times[name].append(time.perf_counter() - start)
        print(f"  round {r + 1}/{rounds}: " + ", ".join(
            f"{name} {values[-1]:.1f} s" for name, values in times.items())
            + f" (load {os.getloadavg()[0]:.1f})", flush=True)
    return times


CASES = {"lucent1": "lucent, one channel at a time", "lucent": "lucent, batched",
         "floor": "floor (features[:17] fwd+bwd)", "vistool": "vistool render_filters",
         "loop": LOOP}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", default="32",
                        help="Adam steps, or a comma-separated list of step counts, each "
                             "timed and scored on its own (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved timed rounds after a warm-up (default: %(default)s)")
    parser.add_argument("--cases", default=",".join(CASES),
                        help="which cases to run, of " + ", ".join(
                            f"{key} ({name})" for key, name in CASES.items())
                        + " (default: all)")
    parser.add_argument("--examples", type=int, default=0, metavar="N",
                        help="also time dataset examples over N JPEGs against the plain "
                             "forward (default: 0, not run)")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 4 steps, 1 round (overrides --steps and --rounds)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    args = parser.parse_args()
    counts = [4] if args.quick else [int(s) for s in args.steps.split(",")]
    rounds = 1 if args.quick else args.rounds
    wanted = {CASES[key] for key in args.cases.split(",")}
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    loaded = vistool.load_model("vgg16", weights="none", device="cpu")
    lucent = import_lucent()
    print(f"Feature visualisation, vgg16 (random weights, seed {args.seed}) {LAYER}, channels "
          f"0-{len(CHANNELS) - 1}, {SIZE}², Adam lr {LR}, CPU, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}"
          + (f", lucent 0.1.8 with kornia {lucent.kornia}" if lucent else ""))
    print(f"Load average at the start: {load()}")
    began = time.perf_counter()
    if lucent is not None:
        check_hooks(lucent, loaded)
    summary = [one_count(loaded, lucent, steps, rounds, args.seed, wanted) for steps in counts]
    if len(counts) > 1:
        print("\nAcross step counts (vistool render_filters against lucent batched):")
        print(f"  {'steps':>5} {'robust act.':>12} {'lucent':>8} {'quality':>8} {'speed':>7}")
        for steps, row in zip(counts, summary):
            if row:
                print(f"  {steps:5d} {row[0]:12.4f} {row[1]:8.4f} {row[0] / row[1]:7.2f}x "
                      f"{row[2]:6.2f}x")
    if args.examples:
        examples_bench(loaded, args.examples, rounds, args.seed)
    print(f"\nLoad average at the end: {load()}; {time.perf_counter() - began:.0f} s in all")


def one_count(loaded, lucent, steps: int, rounds: int, seed: int,
              wanted: set[str]) -> tuple[float, float, float] | None:
    """The timed table and the quality at ``steps`` steps; returns vistool's and lucent
    batched's mean robust activation and the speed ratio, when both ran."""
    images: dict[str, torch.Tensor] = {}
    cases: dict[str, Case] = {}
    if lucent is not None:
        cases.update(lucent_cases(lucent, copy.deepcopy(loaded.model), seed, images))
    cases[CASES["floor"]] = floor_case(loaded.model, seed)
    cases.update(vistool_cases(loaded, seed, images))
    cases = {name: fn for name, fn in cases.items() if name in wanted}
    print(f"\n{steps} steps, {rounds} interleaved rounds:")
    times = run_rounds(cases, steps, rounds)
    base = CASES["vistool"]
    work = len(CHANNELS) * steps
    quality = {name: robust_activation(loaded, imgs, seed) for name, imgs in images.items()}
    print(f"\n  {'':<32} {'median':>9} {'ch-steps/s':>11} {'time/vist.':>11} "
          f"{'robust act. (mean, min-max)':>30}")
    for name, values in times.items():
        med = statistics.median(values)
        q = quality.get(name)
        qtext = f"{q.mean():9.4f} ({q.min():.3f} - {q.max():.3f})" if q is not None else ""
        against = (f"{med / statistics.median(times[base]):10.2f}x" if base in times
                   else f"{'':>11}")
        print(f"  {name:<32} {med:7.2f} s {work / med:11.2f} {against} {qtext:>30}")

    def ratio(slow: str, fast: str, goal: float | None, text: str) -> float | None:
        if slow not in times or fast not in times:
            return None
        per_round = sorted(s / f for s, f in zip(times[slow], times[fast]))
        value = statistics.median(times[slow]) / statistics.median(times[fast])
        print(f"  {text:<44} {value:6.2f}x   (rounds {per_round[0]:.2f}-{per_round[-1]:.2f}x"
              + (f"; goal {goal:g}x: {'met' if value >= goal else 'short'})" if goal else ")"))
        return value

    print("\nSpeed ratios (channel-steps per second):")
    speed = ratio(CASES["lucent"], base, 3, "vistool / lucent batched")
    ratio(CASES["lucent1"], base, 10, "vistool / lucent one at a time")
    ratio(CASES["lucent"], LOOP, None, "vistool loop / lucent batched")
    ratio(CASES["lucent1"], LOOP, None, "vistool loop / lucent one at a time")
    floor = CASES["floor"]
    for name, goal in ((base, 1.35), (LOOP, None)):
        if name not in times or floor not in times:
            continue
        per_round = sorted(v / f for v, f in zip(times[name], times[floor]))
        value = statistics.median(times[name]) / statistics.median(times[floor])
        print(f"  {name.replace('render_filters', 'render_filters time') + ' / floor time':<44} "
              f"{value:6.2f}x   (rounds {per_round[0]:.2f}-{per_round[-1]:.2f}x"
              + (f"; goal <= {goal:g}x: {'met' if value <= goal else 'short'})" if goal else ")"))
    if CASES["lucent"] not in quality:
        return None
    print(f"\nQuality at {steps} steps (goal: vistool >= lucent batched):")
    theirs = float(quality[CASES["lucent"]].mean())
    for name in (base, LOOP):
        if name in quality:
            ours = float(quality[name].mean())
            print(f"  {name:<44} {ours / theirs:6.2f}x lucent batched "
                  f"({'met' if ours >= theirs else 'short'})")
    if base not in quality or speed is None:
        return None
    return float(quality[base].mean()), theirs, speed


def examples_bench(loaded, count: int, rounds: int, seed: int) -> None:
    """Dataset examples of ``features.16`` over ``count`` 256² JPEGs (written to a temporary
    folder, read and transformed by the model's preprocessing through the CLI's DataLoader,
    batches of 32): the CLI's resumable pass (which saves its state after every batch) and
    ``vistool.top_examples`` on that loader's batches, against the model's plain forward
    and its forward up to the layer over the same loader, interleaved rounds."""
    import argparse as ap
    import tempfile

    from PIL import Image
    from torch.utils.data import DataLoader

    from vistool.cli.filters import _examples_pass
    from vistool.data.sources import ImageStream, collate, collect

    folder = Path(tempfile.mkdtemp(prefix="vistool-bench-examples-"))
    rng = np.random.default_rng(seed)
    for i in range(count):  # smooth random colour fields: JPEG decoding costs as a photo's
        small = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((256, 256), Image.BICUBIC).save(folder / f"{i:05d}.jpg")
    sources = collect([str(folder)])
    args = ap.Namespace(model="vgg16", weights="none", checkpoint=None, layer=LAYER, top=9)
    resume = folder / "state.pt"

    def batches():
        loader = DataLoader(ImageStream(sources, loaded.transform), batch_size=32,
                            collate_fn=collate)
        return (batch for _, batch, _ in loader)

    def cli_pass():
        resume.unlink(missing_ok=True)  # (else the rerun resumes from the finished pass)
        _examples_pass(args, loaded, sources, resume)

    def library():
        vistool.top_examples(loaded, batches(), LAYER, 9)

    def plain():
        with torch.inference_mode():
            for batch in batches():
                loaded.model(batch)

    def to_layer():
        with torch.inference_mode():
            for batch in batches():
                forward_until(loaded.model, batch, [LAYER], gradients=False)

    cases = {"CLI --examples pass": cli_pass, "vistool.top_examples": library,
             "model forward (whole)": plain, f"forward to {LAYER}": to_layer}
    print(f"\nDataset examples, vgg16 {LAYER}, {count} 256² JPEGs -> 224², batches of 32, "
          f"{rounds} interleaved rounds after a warm-up:")
    times: dict[str, list[float]] = {name: [] for name in cases}
    for r in range(rounds + 1):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            if r:  # round 0 warms up
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, med in medians.items():
        print(f"  {name:<28} {med:7.2f} s {count / med:8.1f} images/s")
    for name in ("CLI --examples pass", "vistool.top_examples"):
        for base, goal in (("model forward (whole)", 1.15), (f"forward to {LAYER}", None)):
            value = medians[name] / medians[base]
            print(f"  {name} time / {base} time: {value:.3f}x"
                  + (f" (goal <= {goal}x: {'met' if value <= goal else 'short'})" if goal
                     else ""))


def load() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg()) + f" ({os.cpu_count()} CPUs)"


if __name__ == "__main__":
    main()
