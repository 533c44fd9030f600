"""``vistool deepdream``: amplify what chosen layers detect in photographs."""

from __future__ import annotations

import argparse
import json
import sys
import time

from .options import (
    add_model_options,
    add_out_option,
    check_out,
    load,
    non_negative,
    positive_int,
    slug,
)

RANDOM_NOTE = "random weights: the pictures show an untrained model"


def add_parser(sub) -> None:
    p = sub.add_parser(
        "deepdream", help="DeepDream: amplify what layers detect in images",
        description="Gradient ascent on each image (at its own size) to amplify what --layer "
                    "detects: the mean squared activation, one --channel, or the features "
                    "of a --guide image; with octaves, random jitter, tiled gradients and "
                    "optional gradient smoothing. Writes the dreamed image (PNG, the input's "
                    "size), each smaller octave's dream (PNG), the objective per step "
                    "(history.npy) and manifest.json. The pictures need ImageNet-trained "
                    "weights; with --weights none every output says they are random.")
    add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMG", help="image files or directories")
    p.add_argument("--layer", "-l", action="append", required=True, metavar="LAYER",
                   help="layer to amplify, e.g. features.28 (repeatable: the objectives add up)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--channel", type=non_negative(int), metavar="C",
                      help="amplify this channel of each layer instead of all of them")
    what.add_argument("--guide", metavar="IMG",
                      help="amplify what matches this image's features (at its own size)")
    p.add_argument("--octaves", type=positive_int, metavar="N", default=4,
                   help="image sizes, smallest first (default: %(default)s)")
    p.add_argument("--octave-scale", type=float, metavar="S", default=1.4,
                   help="size ratio between octaves, above 1 (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, metavar="N", default=10,
                   help="gradient steps per octave (default: %(default)s)")
    p.add_argument("--lr", type=non_negative(float), default=0.01,
                   help="step size in [0, 1] pixels, on the gradient divided by its mean "
                        "absolute value (default: %(default)s)")
    p.add_argument("--jitter", type=non_negative(int), metavar="PX", default=32,
                   help="largest random roll in pixels, undone after each step "
                        "(default: %(default)s)")
    p.add_argument("--tile", type=positive_int, metavar="PX", default=512,
                   help="largest tile side in pixels for the gradient; bounds memory "
                        "(default: %(default)s)")
    p.add_argument("--smooth", type=non_negative(float), default=0.0, metavar="SIGMA",
                   help="Gaussian blur of the gradient, sigma in pixels (default: none)")
    p.add_argument("--seed", type=int, metavar="N", default=0,
                   help="seed of the random rolls (default: %(default)s)")
    add_out_option(p, "deepdream")
    p.add_argument("--json", action="store_true", help="also print the manifest to stdout")
    p.set_defaults(func=run)


def _tensor(path, channels: int):
    """An image file as (1, C, H, W) in [0, 1] at its own size."""
    from torchvision.transforms.functional import pil_to_tensor

    from ..core.imageio import load_image

    image = load_image(path)
    if channels == 1:
        image = image.convert("L")
    return pil_to_tensor(image)[None].float() / 255


def _save(staging, index: int, path, result, random_weights: bool) -> list[dict]:
    from ..outputs import save_png

    stem = f"{index:03d}-{slug(path.stem)}"
    note = f" ({RANDOM_NOTE})" if random_weights else ""
    outputs = []
    for octave, (image, size) in enumerate(zip(result.octaves[:-1], result.sizes), 1):
        png = f"{stem}-octave{octave}.png"
        save_png(staging / png, image[0].cpu())
        outputs.append({"input": str(path), "png": png, "octave": octave,
                        "size": list(size), "caption": f"{path.name} octave {octave}/"
                        f"{len(result.sizes)} ({size[0]}x{size[1]}){note}"})
    png = f"{stem}.png"
    save_png(staging / png, result.images[0].cpu())
    history = result.history[:, 0].tolist()
    outputs.append({"input": str(path), "png": png, "octave": len(result.sizes),
                    "size": list(result.sizes[-1]),
                    "objective": {"first": round(history[0], 6), "last": round(history[-1], 6)},
                    "caption": f"{path.name} dreamed: {result.objective}{note}"})
    return outputs


def _options(args, loaded) -> dict:
    return {"model": args.model, "weights": args.checkpoint or args.weights,
            "layers": args.layer, "channel": args.channel, "guide": args.guide,
            "octaves": args.octaves, "octave_scale": args.octave_scale, "steps": args.steps,
            "lr": args.lr, "jitter": args.jitter, "tile": args.tile, "smooth": args.smooth,
            "device": str(loaded.device)}


def run(args: argparse.Namespace) -> int:
    import torch

    from ..core.imageio import expand_inputs
    from ..outputs import manifest, resolve_run_dir, run_directory, save_json, save_npy
    from ..synthesize.deepdream import deepdream
    from .options import status

    check_out(args.out)
    paths = expand_inputs(args.images)
    loaded = load(args)
    if loaded.random_weights:
        status("note: DeepDream needs ImageNet-trained weights for its usual pictures; "
               "these amplify random filters")
    channels = loaded.input_size[0]
    images = [_tensor(p, channels) for p in paths]
    guide = _tensor(args.guide, channels) if args.guide else None
    start = time.perf_counter()
    results = [deepdream(loaded, image.to(loaded.device), args.layer, args.channel, guide,
                         args.octaves, args.octave_scale, args.steps, args.lr, args.jitter,
                         args.tile, args.smooth, args.seed, progress=sys.stderr.isatty())
               for image in images]
    out_dir = resolve_run_dir(args.out, "deepdream")
    with run_directory(out_dir) as staging:
        outputs = [item for i, (path, result) in enumerate(zip(paths, results))
                   for item in _save(staging, i, path, result, bool(loaded.random_weights))]
        save_npy(staging / "history.npy", torch.stack([r.history[:, 0] for r in results]).cpu())
        info = manifest("deepdream", [str(p) for p in paths], _options(args, loaded), outputs,
                        seed=args.seed, model=loaded.describe(),
                        timings={"seconds": round(time.perf_counter() - start, 4)})
        save_json(staging / "manifest.json", info)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"wrote {len(outputs)} images ({len(results)} dreamed, "
              f"{len(outputs) - len(results)} octaves) to {out_dir}"
              + (f" ({RANDOM_NOTE})" if loaded.random_weights else ""))
    return 0
