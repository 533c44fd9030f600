"""``vistool invert``: each image reconstructed from one layer's activations (feature
inversion), layer beside layer."""

from __future__ import annotations

import argparse
import sys
import time

from .options import IMAGES_HELP, add_model_options, add_out_option, positive_int, slug


def add_parser(sub) -> None:
    p = sub.add_parser("invert", help="feature inversion: what a layer keeps of an image",
                       description="Reconstruct each image from its activations at each "
                                   "--layer alone (Mahendran & Vedaldi: gradient descent from "
                                   "a random image, the feature-visualisation "
                                   "parameterisation, a total-variation prior). Writes per "
                                   "image a strip (the image, then one reconstruction per "
                                   "layer), each reconstruction as a PNG, and manifest.json "
                                   "with how close each comes (activations and pixels).")
    add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMG", help=IMAGES_HELP)
    p.add_argument("--layer", "-l", action="append", required=True,
                   help="a layer with a spatial output (repeatable: one reconstruction each, "
                        "early layers first for a readable strip)")
    p.add_argument("--steps", type=positive_int, default=400,
                   help="optimisation steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.2,
                   help="peak Adam learning rate (default: %(default)s)")
    p.add_argument("--tv", type=float, default=5e-4,
                   help="weight of the total-variation prior (default: %(default)s)")
    p.add_argument("--param", choices=("fft", "pixel"), default="fft",
                   help="image parameterisation (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the start images (default: %(default)s)")
    add_out_option(p, "invert")
    p.set_defaults(func=run, batch_size=1 << 30)  # every image in one run


def run(args: argparse.Namespace) -> int:
    import torch

    from ..drawing import enlarge, image_grid
    from ..outputs import manifest, resolve_run_dir, run_directory, save_json, save_png
    from ..synthesize.inversion import invert
    from .options import prepare_images

    paths, loaded, layers, batches = prepare_images(args)
    start = time.perf_counter()
    _, batch = next(batches)
    found = invert(loaded, batch, layers, steps=args.steps, lr=args.lr, tv=args.tv,
                   param=args.param, seed=args.seed, progress=sys.stderr.isatty())
    out_dir = resolve_run_dir(args.out, "invert")
    outputs = []
    with run_directory(out_dir) as staging:
        for i, path in enumerate(paths):
            base = f"{i:03d}-{slug(path.stem)}"
            strip = [found.inputs[i], *(found.images[layer][i] for layer in layers)]
            save_png(staging / f"{base}.png", image_grid(torch.stack(strip), cols=len(strip),
                                                          cell=128))
            entry = {"image": str(path), "png": f"{base}.png", "layers": []}
            for layer in layers:
                png = f"{base}_{slug(layer)}.png"
                save_png(staging / png, enlarge(found.images[layer][i], 128))
                entry["layers"].append({
                    "layer": layer, "png": png,
                    "activation_error": round(float(found.errors[layer][i]), 6),
                    "pixel_distance": round(float(found.distances[layer][i]), 6)})
            outputs.append(entry)
        save_json(staging / "manifest.json", manifest(
            "invert", [str(p) for p in paths],
            {"model": args.model, "weights": args.checkpoint or args.weights, "layers": layers,
             "steps": args.steps, "lr": args.lr, "tv": args.tv, "param": args.param,
             "device": str(loaded.device)}, outputs, seed=args.seed,
            timings={"seconds": round(time.perf_counter() - start, 4)}, model=loaded.describe()))
    for layer in layers:
        errors = found.errors[layer]
        print(f"{layer}: activations within {float(errors.mean()):.1%} (mean relative L2), "
              f"pixels {float(found.distances[layer].mean()):.1%} from the image")
    print(f"wrote {len(outputs)} strips to {out_dir}")
    return 0
