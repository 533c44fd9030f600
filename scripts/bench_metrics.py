"""Evaluation metrics speed, vistool vs Quantus 0.6.0, side by side in one run (CPU).

Deletion curves (``vistool.evaluate.faithfulness.perturbation_curve``, every step of every
image in batched forwards of ``--batch-size`` perturbed images) against Quantus'
``PixelFlipping``, both with ``--steps`` steps (24) and the baseline Quantus calls "black"
(each image's minimum over C, H, W), Grad-CAM maps plus 1e-4 of seeded uniform noise (no
ties, so that both remove the pixels in the same order):

* ``shapes-64``: the trained shapes CNN (cached; trained on first use, minutes), 32
  validation images (``ShapesDataset(32, size=64, seed=10_000)``) and their labels;
* ``resnet18-64``: resnet18 with random weights (seed 0), 8 ``torch.rand`` images of 64²,
  the predicted classes: the issue's reference configuration;
* ``resnet18-224``: the same at 224², 32 images; Quantus is timed on the first
  ``--peer-images`` (4) only, to keep the run in minutes: the ratio is of images/s, each
  side at its own batch (every Quantus step is one forward of its whole batch, so a larger
  batch would only change its throughput as much as batching changes a forward's).

Quantus counts features over C·H·W (the map is broadcast over the channels) and asserts that
``features_in_step`` divides H·W, so its 24-step curve is ``features_in_step = C·H·W/24``:
24 forwards of the batch, one per step, as ours. At every C-th step both have removed the
same whole pixels (the other steps of Quantus end inside a pixel, some of its channels
removed), and there the curves must agree: ``max|Δ|`` compares ``ours.scores[:, C::C]`` with
``theirs[:, C-1::C]`` (should be ≤ 1e-5); the difference over all 24 points is printed too.
The per-channel recipe of ``tests/test_quality.py`` (``features_in_step = H·W/16``, C·16
points, ``theirs[:, C-1::C]`` against every point of our 16-step curve) is also run once on
Quantus' images, untimed, as a full-curve check (H·W/24 is not an integer at 64² or 224²,
so that recipe cannot run at 24 steps).

``sanity``: ``randomisation_check`` (cascading, top down, every randomisable layer, Grad-CAM)
against ``quantus.MPRT(layer_order="top_down", similarity_func=correlation_spearman)`` whose
``explain_func`` is the same vistool Grad-CAM, on the shapes CNN, ``--sanity-images`` (8)
images; both compute the original maps once and the maps after each layer. The mean
Spearman correlation after the last step is printed for both: they differ, as the layers
are re-initialised from other seeds, and Quantus leaves constant maps out (NaN) where ours
counts them as 0.

Times are medians of ``--rounds`` interleaved rounds (ours, Quantus, ours, ...) after a
warm-up call each (whose outputs are compared), with ``--threads`` torch (and BLAS)
threads. Quantus is not installed into the project's environment: ``make bench`` puts it in
``.venv/peers`` (``pip install --no-deps --target .venv/peers quantus==0.6.0``), and only
this script puts that folder on ``sys.path``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from pathlib import Path
from types import ModuleType

import numpy as np
import torch
from benchutil import timeit

import vistool
from vistool.data.shapes import ShapesDataset
from vistool.evaluate.faithfulness import perturbation_curve
from vistool.evaluate.sanity import randomisation_check
from vistool.evaluate.suite import explanation_maps
from vistool.explainers.cam import ConstantMapWarning

PEERS = Path(__file__).resolve().parent.parent / ".venv" / "peers"
CPU = torch.device("cpu")
CASES = ("shapes-64", "resnet18-64", "resnet18-224", "sanity")
CHECK_STEPS = 16  # the full-curve check, as tests/test_quality.py
# case -> (images, Quantus' images), full and --quick
CURVES = {"shapes-64": (32, 32), "resnet18-64": (8, 8), "resnet18-224": (32, 4)}
QUICK = {"shapes-64": (4, 4), "resnet18-64": (2, 2), "resnet18-224": (2, 1)}
COMMON = {"normalise": False, "abs": False, "disable_warnings": True,
          "display_progressbar": False}


def import_quantus() -> ModuleType:
    """Quantus from ``.venv/peers`` (put first on ``sys.path`` here only); exits without it."""
    if PEERS.is_dir() and str(PEERS) not in sys.path:
        sys.path.insert(0, str(PEERS))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import quantus
    except ImportError as error:
        sys.exit(f"Quantus not available ({error}); install it with `.venv/bin/python -m pip "
                 f"install --no-deps --target .venv/peers quantus==0.6.0` (see `make bench`).")
    return quantus


def shapes_model() -> vistool.LoadedModel:
    from trainers.recipes import pretrained_shapes_cnn
    from vistool.core.cache import cache_dir

    if not (cache_dir() / "shapes-cnn-v3" / "best.safetensors").is_file():
        print("training the shapes CNN (first use; minutes on a CPU) ...", flush=True)
    path = pretrained_shapes_cnn(progress=False, log=lambda _line: None)
    return vistool.load_model(str(path), device="cpu")


def shapes_images(loaded, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = ShapesDataset(n, size=64, seed=10_000)
    x = torch.stack([loaded.transform(vistool.load_image(image)) for image in data.images])
    return x, torch.from_numpy(data.labels)


def resnet18() -> vistool.LoadedModel:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return vistool.load_model("resnet18", weights="none", device="cpu")


def random_images(loaded, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(size))
    with torch.no_grad():
        labels = loaded.model.eval()(x).argmax(1)
    return x, labels


def untied_maps(loaded, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Grad-CAM maps plus 1e-4 of seeded uniform noise: no ties, one order of removal."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantMapWarning)
        maps = explanation_maps(loaded, x, "gradcam", labels)
    return maps + 1e-4 * torch.rand(maps.shape, generator=torch.Generator().manual_seed(0))


def check_steps(steps: int, shape: torch.Size) -> None:
    c, h, w = shape[1:]
    if (c * h * w) % steps or (h * w) % (c * h * w // steps):
        sys.exit(f"--steps {steps}: Quantus needs features_in_step = C*H*W/steps to divide "
                 f"H*W at {c}x{h}x{w}; use a multiple of {c} that divides {c * h * w}.")


def curve_case(quantus, name: str, loaded, x: torch.Tensor, labels: torch.Tensor,
               peer_n: int, args) -> None:
    n, c, h, w = x.shape
    check_steps(args.steps, x.shape)
    maps = untied_maps(loaded, x, labels)
    black = x.amin((1, 2, 3), keepdim=True).expand_as(x)  # Quantus' "black"
    net = loaded.model.eval()
    call = {"model": net, "x_batch": x[:peer_n].numpy(), "y_batch": labels[:peer_n].numpy(),
            "s_batch": None, "device": "cpu", "channel_first": True, "softmax": True}
    a_batch = maps[:peer_n, None].numpy()
    flipping = quantus.PixelFlipping(features_in_step=c * h * w // args.steps,
                                     perturb_baseline="black", **COMMON)
    out: dict[str, object] = {}

    def ours():
        out["ours"] = perturbation_curve(loaded, x, maps, labels, "deletion", steps=args.steps,
                                         baseline=black, batch_size=args.batch_size).scores

    def theirs():
        out["theirs"] = np.asarray(flipping(a_batch=a_batch.copy(), **call))

    times = timeit({"ours": ours, "theirs": theirs}, args.rounds, CPU)
    mine, their = out["ours"][:peer_n].numpy(), out["theirs"]
    assert their.shape == (peer_n, args.steps), their.shape
    whole = float(np.abs(mine[:, c::c] - their[:, c - 1::c]).max())
    every = float(np.abs(mine[:, 1:] - their).max())
    full = None
    if not args.skip_full_check and (h * w) % CHECK_STEPS == 0:
        per_channel = quantus.PixelFlipping(features_in_step=h * w // CHECK_STEPS,
                                            perturb_baseline="black", **COMMON)
        their16 = np.asarray(per_channel(a_batch=a_batch.copy(), **call))[:, c - 1::c]
        mine16 = perturbation_curve(loaded, x[:peer_n], maps[:peer_n], labels[:peer_n],
                                    "deletion", steps=CHECK_STEPS, baseline=black[:peer_n],
                                    batch_size=args.batch_size).scores[:, 1:].numpy()
        full = float(np.abs(mine16 - their16).max())
    ours_rate, their_rate = n / times["ours"], peer_n / times["theirs"]
    verdict = "ok" if whole <= 1e-5 and (full is None or full <= 1e-5) else "DIFFERENT"
    print(f"  {name:<13} {n:6d} {times['ours']:8.2f} s {ours_rate:8.2f}   {peer_n:6d} "
          f"{times['theirs']:8.2f} s {their_rate:8.2f}   {ours_rate / their_rate:5.2f}x   "
          f"{whole:.1e} {verdict}")
    detail = f"all {args.steps} points (Quantus' partial pixels) {every:.1e}"
    if full is not None:
        detail += f"; full {CHECK_STEPS}-step curve, per-channel recipe {full:.1e}"
    print(f"  {'':<13} max|Δ| {detail}", flush=True)


def sanity_case(quantus, loaded, x: torch.Tensor, labels: torch.Tensor, args) -> None:
    layer = loaded.default_layer

    def explainer(net, images, targets):
        return explanation_maps(net, images, "gradcam", targets, layer)

    def explain_func(model, inputs, targets, **_kwargs):  # Quantus' calling convention
        maps = explainer(model, torch.from_numpy(np.asarray(inputs)), torch.as_tensor(targets))
        return maps[:, None].numpy()

    net = loaded.model.eval()
    out: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantMapWarning)  # random layers: zero maps
        warnings.simplefilter("ignore", RuntimeWarning)  # Quantus' Spearman of those: NaN
        a_batch = explainer(net, x, labels)[:, None].numpy()
        mprt = quantus.MPRT(similarity_func=quantus.similarity_func.correlation_spearman,
                            layer_order="top_down", **COMMON)

        def ours():
            out["ours"] = randomisation_check(loaded, x, labels, explainer)

        def theirs():
            out["theirs"] = mprt(model=net, x_batch=x.numpy(), y_batch=labels.numpy(),
                                 a_batch=a_batch.copy(), s_batch=None, device="cpu",
                                 channel_first=True, explain_func=explain_func)

        times = timeit({"ours": ours, "theirs": theirs}, args.rounds, CPU)
    result, scores = out["ours"], out["theirs"]
    last = np.asarray(list(scores.values())[-1], dtype=float)
    print(f"\nSanity check, shapes CNN, {len(x)} images, Grad-CAM at {layer}, cascading top "
          f"down: vistool randomisation_check ({len(result.layers)} layers) vs Quantus MPRT "
          f"({len(scores) - 1} layers)")
    print(f"  ours {times['ours']:.2f} s, Quantus {times['theirs']:.2f} s: ratio "
          f"{times['theirs'] / times['ours']:.2f}x (Quantus' time / ours)")
    ours_last = result.spearman[-1]
    print(f"  mean Spearman after the last step (other seeds): ours "
          f"{float(ours_last.mean()):.3f} ({int((ours_last == 0).sum())} constant maps count "
          f"0), Quantus {np.nanmean(last):.3f} ({int(np.isnan(last).sum())} NaN left out)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES),
                        help="which cases to run (default: all)")
    parser.add_argument("--steps", type=int, default=24, help="curve steps (default: 24)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="timed interleaved rounds after a warm-up (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch and BLAS threads (default: %(default)s)")
    parser.add_argument("--peer-images", type=int,
                        help="images Quantus is timed on in every curve case (default: all, "
                             "but 4 for resnet18-224)")
    parser.add_argument("--sanity-images", type=int, default=8, help="(default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="our perturbed images per forward (default: %(default)s)")
    parser.add_argument("--skip-full-check", action="store_true",
                        help="skip the untimed per-channel full-curve check")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 12 steps, 1-4 images, one round")
    args = parser.parse_args()
    sizes = CURVES
    if args.quick:
        args.steps, args.rounds, args.sanity_images, sizes = 12, 1, 2, QUICK
    quantus = import_quantus()
    torch.set_num_threads(args.threads)
    limits = contextlib.nullcontext()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limits = threadpool_limits(args.threads)
    with limits:
        print(f"torch {torch.__version__}, Quantus {quantus.__version__}, {args.threads} "
              f"thread(s), CPU; medians of {args.rounds} interleaved round(s)")
        shapes = shapes_model() if {"shapes-64", "sanity"} & set(args.cases) else None
        resnet = resnet18() if any(c.startswith("resnet18") for c in args.cases) else None
        curves = [case for case in CASES if case in args.cases and case in sizes]
        if curves:
            print(f"\nDeletion curves, {args.steps} steps, baseline each image's minimum, "
                  "Grad-CAM maps; images/s of each side (Quantus on its own images)")
            print(f"  {'':<13} {' ours ':-^26}   {' Quantus ':-^26}")
            print(f"  {'case':<13} {'images':>6} {'time':>10} {'img/s':>8}   {'images':>6} "
                  f"{'time':>10} {'img/s':>8}   {'ratio':>6}   max|Δ| (whole pixels)")
        for case in curves:
            n, peer_n = sizes[case]
            peer_n = min(n, args.peer_images or peer_n)
            if case == "shapes-64":
                x, labels = shapes_images(shapes, n)
                curve_case(quantus, case, shapes, x, labels, peer_n, args)
            else:
                size = int(case.split("-")[1])
                x, labels = random_images(resnet, n, size)
                curve_case(quantus, case, resnet, x, labels, peer_n, args)
        if "sanity" in args.cases:
            x, labels = shapes_images(shapes, args.sanity_images)
            sanity_case(quantus, shapes, x, labels, args)


if __name__ == "__main__":
    main()
