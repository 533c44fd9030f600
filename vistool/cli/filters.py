"""``vistool filters``: images that maximise each filter of a layer, or each class."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from ..core.errors import VistoolError
from .options import (
    add_model_options,
    add_out_option,
    channel_list,
    check_out,
    load,
    non_negative,
    positive_int,
)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "filters", help="feature visualisation: what each filter (or class) looks for",
        description="Optimise one image per channel of --layer (or per --class) by gradient "
                    "ascent with transformation robustness; write one PNG per target, a "
                    "contact sheet (sheet.png), the images (images.npy) and manifest.json "
                    "with each image's final and transform-robust activation. --examples adds "
                    "each channel's top dataset examples beside it. --objective renders any "
                    "objective written as lucent's text, --interpolate goes from one to "
                    "another; --weights-rgb shows the first convolution's kernels instead.")
    add_model_options(p)
    _add_targets(p)
    p.add_argument("--channels", type=channel_list, metavar="RANGE",
                   help="channels of --layer, e.g. 0-63 or 0,4,9-12 (default: the first 64)")
    p.add_argument("--size", type=positive_int, default=128,
                   help="image size in pixels; the model sees this size (default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=256,
                   help="optimisation steps (default: %(default)s)")
    p.add_argument("--lr", type=float, default=0.05,
                   help="Adam peak learning rate: warm-up, then a cosine to a tenth; runs "
                        "shorter than 256 steps take a higher peak (up to 2x) and a shorter "
                        "warm-up (default: %(default)s)")
    p.add_argument("--param", choices=("fft", "pixel"), default="fft",
                   help="image parameterisation: fft (1/f spectrum, decorrelated colour) or "
                        "pixel (default: %(default)s)")
    p.add_argument("--no-transforms", action="store_true",
                   help="optimise without random pad/jitter/scale/rotation")
    p.add_argument("--batch-size", type=positive_int,
                   help="targets per forward/backward pass (default: 8 on CPU, 32 on CUDA)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed; a target's image depends only on it (default: %(default)s)")
    p.add_argument("--exchange-steps", type=non_negative(int), default=0, metavar="N",
                   help="--layer: then N more steps for each channel from whichever rendered "
                        "image excites it most (correlated channels leave poorer optima; a "
                        "channel's image then depends on the others requested) (default: 0)")
    p.add_argument("--score", choices=("logit", "log_prob"), default="logit",
                   help="--class: maximise the class's logit or its log-probability (pushes "
                        "the other classes down too) (default: %(default)s)")
    p.add_argument("--no-redirect-relu", action="store_true",
                   help="plain ReLU gradients (by default a ReLU that passes no gradient for "
                        "an image lets through those that would turn it on, as lucid does)")
    add_out_option(p, "filters")
    p.add_argument("--json", action="store_true", help="also print the manifest to stdout")
    p.set_defaults(func=run)


def _add_targets(p: argparse.ArgumentParser) -> None:
    """What to render (one of --layer, --class, --weights-rgb, --objective, --interpolate)
    and the options of the objectives and the dataset examples."""
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--layer", "-l", help="layer whose channels to render (e.g. features.28; "
                                            "a conv before an in-place ReLU is pre-ReLU)")
    what.add_argument("--class", dest="class_targets", action="append", metavar="NAME|IDX",
                      help="render the image that maximises this class (repeatable)")
    what.add_argument("--weights-rgb", nargs="?", const="", metavar="LAYER",
                      help="show the kernels of the first conv layer (or LAYER) as images")
    what.add_argument("--objective", metavar="TEXT",
                      help="render --batch images that maximise this objective, as lucent "
                           "writes them: LAYER:CHANNEL, LAYER:CHANNEL:neuron, logit:CLASS, "
                           "functions (channel, neuron, logit, deepdream, diversity, l1, l2, "
                           "total_variation, blur, direction(LAYER, FILE.npy)), + - * and "
                           "numbers, e.g. 'features.12:3 - "
                           "0.5*diversity(features.12)' (a leading minus: "
                           "--objective=-features.12:3)")
    what.add_argument("--interpolate", nargs=2, metavar=("A", "B"),
                      help="--frames images from objective A to objective B (as --objective "
                           "writes them), frame i maximising (1-t)*A + t*B, all from one start "
                           "(lucid's channel interpolation)")
    p.add_argument("--batch", type=positive_int, default=1,
                   help="--objective: how many images, rendered together (diversity(LAYER) "
                        "pushes them apart) (default: %(default)s)")
    p.add_argument("--frames", type=positive_int, default=6,
                   help="--interpolate: how many frames (default: %(default)s)")
    p.add_argument("--negative", action="store_true",
                   help="--layer: each channel's negative image (what lowers it most); "
                        "--objective: minimise the objective")
    p.add_argument("--examples", nargs="+", metavar="SOURCE",
                   help="--layer: also find each channel's --top dataset examples in these "
                        "images (files, folders, globs, @lists, shapes:N, digits, "
                        "imagefolder:DIR), streamed in one pass; examples.png per channel: "
                        "the synthetic image, then the patches of the top images that the "
                        "strongest position sees")
    p.add_argument("--top", type=positive_int, default=9,
                   help="--examples: images per channel (default: %(default)s)")


def _compute(args: argparse.Namespace, loaded):
    from ..synthesize.featureviz import render, render_classes, render_filters
    from ..synthesize.transform import Transforms

    options = {"size": args.size, "steps": args.steps, "lr": args.lr, "param": args.param,
               "transforms": Transforms.none() if args.no_transforms else None,
               "seed": args.seed, "redirect_relu": not args.no_redirect_relu,
               "progress": sys.stderr.isatty()}
    if args.objective:
        text = f"-({args.objective})" if args.negative else args.objective
        return render(loaded, text, batch=args.batch, **options)
    if args.interpolate:
        first, second = args.interpolate
        return render(loaded, first, interpolate=second, batch=args.frames, **options)
    options["batch_size"] = args.batch_size
    if args.class_targets:
        return render_classes(loaded, args.class_targets, score=args.score, **options)
    return render_filters(loaded, args.layer, args.channels, negative=args.negative,
                          exchange_steps=args.exchange_steps, **options)


def _outputs(args, loaded, staging, result) -> list[dict]:
    from ..drawing import enlarge, image_grid
    from ..outputs import save_npy, save_png

    save_png(staging / "sheet.png", image_grid(result.images, cell=128))
    save_npy(staging / "images.npy", result.images)
    outputs = []
    for i, target in enumerate(result.targets):
        name = loaded.class_name(target) if result.kind == "class" else result.objective
        png = f"{result.kind}{target:04d}.png"
        save_png(staging / png, enlarge(result.images[i], 128))
        outputs.append({"target": target, "name": name, "png": png,
                        "activation": round(float(result.activations[i]), 6),
                        "robust_activation": round(float(result.robust_activations[i]), 6),
                        "caption": f"{result.layer or result.kind} {name or target}"})
    return outputs


def _examples_pass(args, loaded, sources, resume: Path):
    """The top examples over ``sources``, resumable: after every batch the pass so far is
    saved to ``resume`` (with the sources read and a signature of the request); a rerun
    of the same request goes on from there. Returns the result and the readable images'
    keys in stream order."""
    import hashlib
    from dataclasses import asdict

    import torch
    from torch.utils.data import DataLoader

    from ..data.sources import ImageStream, collate
    from ..synthesize.examples import TopExamples, top_examples

    signature = hashlib.sha256(json.dumps(
        [args.model, args.weights, args.checkpoint, args.layer, args.top,
         [s.key for s in sources]]).encode()).hexdigest()
    saved = torch.load(resume, weights_only=True) if resume.is_file() else {}
    if saved.get("signature") != signature:
        saved = {}
    start = TopExamples(**saved["state"]) if saved else None
    keys, done = list(saved.get("keys", [])), [saved.get("done", 0)]

    def batches():
        first = done[0]
        loader = DataLoader(ImageStream(sources[first:], loaded.transform), batch_size=32,
                            collate_fn=collate)
        for positions, batch, errors in loader:
            done[0] += len(positions) + len(errors)
            if batch is not None:
                keys.extend(sources[first + p].key for p in positions)
                yield batch

    def save(state: TopExamples) -> None:
        torch.save({"signature": signature, "state": asdict(state), "keys": keys,
                    "done": done[0]}, resume)

    found = top_examples(loaded, batches(), args.layer, args.top, total=len(sources),
                         progress=sys.stderr.isatty(), start=start, after_batch=save)
    return found, keys


def _examples(args, loaded, staging, result, outputs: list[dict], sources,
              resume: Path) -> None:
    """Each rendered channel's top dataset examples: ``examples{C}.png`` (the synthetic
    image, then the patches) and, in its manifest entry, the images and activations."""
    import torch

    from ..core.imageio import deprocess, resize
    from ..data.sources import ImageStream
    from ..drawing import image_grid
    from ..outputs import save_png
    from ..synthesize.examples import receptive_field

    found, keys = _examples_pass(args, loaded, sources, resume)
    field = receptive_field(loaded, args.layer, loaded.input_size[-1])
    stream = ImageStream(sources, loaded.transform)
    by_key = {source.key: i for i, source in enumerate(sources)}

    def picture(index: int):
        return deprocess(stream[by_key[keys[index]]][1], loaded.mean, loaded.std)

    for image, entry in zip(result.images, outputs):
        channel = entry["target"]
        row = [resize(image[None], (96, 96), clamp=True)[0],
               *found.patches(channel, picture, field, (96, 96))]
        listed = [{"path": keys[index], "y": int(y), "x": int(x),
                   "activation": round(float(value), 6)}
                  for index, (y, x), value in zip(found.indices[channel].tolist(),
                                                  found.positions[channel],
                                                  found.values[channel]) if index >= 0]
        png = f"examples{channel:04d}.png"
        save_png(staging / png, image_grid(torch.stack(row), cols=len(row)))
        entry.update(examples=listed, examples_png=png, field=field,
                     mean_activation=round(float(found.means[channel]), 6))


def _weights_rgb(args, loaded, staging) -> list[dict]:
    from ..drawing import image_grid
    from ..outputs import save_png
    from ..synthesize.featureviz import first_layer_weights

    kernels = first_layer_weights(loaded, args.weights_rgb or None)
    save_png(staging / "sheet.png", image_grid(kernels, cell=32))
    return [{"png": "sheet.png", "kernels": list(kernels.shape),
             "caption": f"{args.weights_rgb or 'first conv'} kernels"}]


def run(args: argparse.Namespace) -> int:
    from ..outputs import manifest, resolve_run_dir, run_directory, save_json

    if args.channels is not None and not args.layer:
        raise VistoolError("--channels needs --layer; give the layer whose channels to render")
    if args.examples and not args.layer:
        raise VistoolError("--examples needs --layer: the channels whose examples to find")
    if args.negative and not (args.layer or args.objective):
        raise VistoolError("--negative needs --layer or --objective")
    if args.negative and args.exchange_steps:
        raise VistoolError("--negative and --exchange-steps do not combine: the exchange picks "
                           "the image that excites a channel most; drop one")
    check_out(args.out)
    sources = None
    if args.examples:  # (every source found before anything runs)
        from ..data.sources import collect

        sources = collect(args.examples)
    loaded = load(args)
    start = time.perf_counter()
    result = None if args.weights_rgb is not None else _compute(args, loaded)
    out_dir = resolve_run_dir(args.out, "filters")
    resume = out_dir.parent / f".{out_dir.name}.examples.pt"  # a killed examples pass
    with run_directory(out_dir) as staging:
        outputs = (_weights_rgb(args, loaded, staging) if result is None
                   else _outputs(args, loaded, staging, result))
        if args.examples:
            _examples(args, loaded, staging, result, outputs, sources, resume)
        options = {"model": args.model, "weights": args.checkpoint or args.weights,
                   "layer": args.layer, "classes": args.class_targets, "channels": args.channels,
                   "size": args.size, "steps": args.steps, "lr": args.lr, "param": args.param,
                   "transforms": not args.no_transforms, "device": str(loaded.device),
                   "exchange_steps": args.exchange_steps, "score": args.score,
                   "objective": args.objective, "batch": args.batch,
                   "interpolate": args.interpolate, "frames": args.frames,
                   "negative": args.negative, "examples": args.examples, "top": args.top,
                   "redirect_relu": not args.no_redirect_relu}
        info = manifest("filters", [], options, outputs, seed=args.seed,
                        timings={"seconds": round(time.perf_counter() - start, 4)},
                        model=loaded.describe())
        save_json(staging / "manifest.json", info)
    resume.unlink(missing_ok=True)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"wrote {len(outputs)} images to {out_dir}")
    return 0
