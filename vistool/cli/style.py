"""``vistool style``: neural style transfer, by optimising the image's pixels (Gatys et al.) or
in one forward pass of a trained network (``--fast``, Johnson et al.)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .options import (
    add_model_options,
    add_out_option,
    check_out,
    floats,
    load,
    non_negative,
    positive_int,
    slug,
)

LOSSES = ("total", "content", "style", "tv")
# The library's choices (vistool.synthesize.style), repeated so that --help needs no torch.
OPTIMIZERS, INITS, COLOR_MODES, POOLINGS = (("lbfgs", "adam"), ("content", "noise", "style"),
                                            ("luminance", "histogram"), ("max", "avg"))


def _sizes(text: str) -> list[int]:
    """An argparse type: comma-separated sizes in pixels, each at least 1."""
    try:
        sizes = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 256,512, got {text!r}") from None
    if min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes must be at least 1, got {text!r}")
    return sizes


def _names(text: str) -> list[str]:
    """An argparse type: comma-separated layer names."""
    return [name.strip() for name in text.split(",") if name.strip()]


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--style-weights", type=floats, metavar="W1,W2",
                   help="blend several styles' Gram targets with these weights (default: equal)")
    p.add_argument("--size", type=positive_int, help="longer side of the content and the "
                   "styles in pixels (default: 512; with --fast each image's own size)")
    p.add_argument("--scales", type=_sizes, metavar="S1,S2", help="coarse to fine, e.g. "
                   "256,512: each scale starts from the previous result (the last is the "
                   "output size; overrides --size)")
    p.add_argument("--steps", type=positive_int, default=300,
                   help="loss evaluations per scale (default: %(default)s)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="lbfgs",
                   help="L-BFGS (the paper's) or Adam (default: %(default)s)")
    p.add_argument("--lr", type=float, help="learning rate (default: 1 for lbfgs, 0.02 for adam)")
    p.add_argument("--content-weight", type=non_negative(float), default=1.0, metavar="W",
                   help="content loss: mean squared feature difference (default: %(default)s)")
    p.add_argument("--style-weight", type=non_negative(float), default=1e6, metavar="W",
                   help="style loss: mean squared difference of Grams divided by C*H*W, "
                        "summed over layers (default: %(default)g)")
    p.add_argument("--tv-weight", type=non_negative(float), default=0.0, metavar="W",
                   help="total variation (mean absolute neighbour difference), for smoother "
                        "images; 0 as in the paper (default: %(default)s)")
    p.add_argument("--content-layers", type=_names, default=["conv4_2"], metavar="L1,L2",
                   help="paper names (conv4_2) or module names (features.21) "
                        "(default: conv4_2)")
    p.add_argument("--style-layers", type=_names, metavar="L1,L2",
                   default=["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"],
                   help="(default: conv1_1,conv2_1,conv3_1,conv4_1,conv5_1)")
    p.add_argument("--preserve-color", choices=COLOR_MODES, help="keep the content's colours: "
                   "luminance (the result's luminance, the content's chroma) or histogram "
                   "(the styles given the content's colour mean and covariance first)")
    p.add_argument("--init", choices=INITS, default="content",
                   help="start from the content, noise or the first style (default: %(default)s)")
    p.add_argument("--pooling", choices=POOLINGS, default="max",
                   help="avg: average pooling, as the paper suggests (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seeds the noise init "
                                                       "(default: %(default)s)")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "style", help="neural style transfer (Gatys et al.; --fast: Johnson et al.)",
        description="Optimise an image so that its VGG features match CONTENT's and its "
                    "Gram matrices the STYLE images'; write result.png, result.npy, the loss "
                    "curve (loss.png), losses.npy and manifest.json. It needs ImageNet "
                    "weights to look right: with --weights none every output says so. "
                    "With --fast MODEL every IMAGE is stylised in one forward pass of a "
                    "network trained by 'vistool train fast-style' (one PNG per image).")
    p.add_argument("images", metavar="IMAGE", nargs="+",
                   help="CONTENT STYLE [STYLE ...]; with --fast: the images to stylise "
                        "(files or directories)")
    p.add_argument("--fast", metavar="MODEL",
                   help="a fast-style checkpoint (.safetensors from 'vistool train "
                        "fast-style'): stylise each IMAGE in one forward pass, any size")
    _options(p)
    add_model_options(p)
    model = next(a for a in p._actions if a.dest == "model")
    model.required, model.default = False, "vgg19"
    model.help += " (default: %(default)s; not used with --fast)"
    add_out_option(p, "style")
    p.add_argument("--json", action="store_true", help="also print the manifest to stdout")
    p.set_defaults(func=run)


def _loss_curve(result, loaded):
    """The losses of every evaluation on a log scale, as an RGB array (Agg, no pyplot); the
    title names the weights, in capitals when they are random."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6.4, 4), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for column, name in enumerate(LOSSES):
        values = result.history[:, column].numpy()
        if values.max() > 0:
            axes.plot(values, label=name)
    for start in result.scale_starts[1:]:
        axes.axvline(start, color="grey", linestyle=":")
    axes.set_yscale("log", nonpositive="mask")
    weights = f"RANDOM WEIGHTS: {loaded.weights}" if loaded.random_weights else loaded.weights
    axes.set(xlabel="evaluation", ylabel="weighted loss", title=f"style transfer; {weights}")
    axes.title.set_fontsize(8)
    axes.legend()
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _write(args, loaded, result, staging, seconds: float) -> dict:
    from ..outputs import manifest, save_json, save_npy, save_png

    save_png(staging / "result.png", result.image[0])
    save_npy(staging / "result.npy", result.image)
    save_npy(staging / "losses.npy", result.history)
    save_png(staging / "loss.png", _loss_curve(result, loaded))
    options = {key: getattr(args, key) for key in (
        "model", "size", "scales", "steps", "optimizer", "lr", "content_weight",
        "style_weight", "tv_weight", "content_layers", "style_layers", "style_weights",
        "preserve_color", "init", "pooling")}
    options.update(weights=args.checkpoint or args.weights, device=str(loaded.device),
                   layers=result.layers, sizes=result.sizes)
    final = dict(zip(LOSSES, (round(float(v), 8) for v in result.final)))
    outputs = [{"png": "result.png", "npy": "result.npy", "final_loss": final,
                "caption": f"style transfer {'x'.join(map(str, result.sizes[-1]))}"},
               {"png": "loss.png", "npy": "losses.npy", "evaluations": len(result.history),
                "caption": "losses per evaluation"}]
    info = manifest("style", args.images, options, outputs, seed=args.seed,
                    timings={"seconds": round(seconds, 4)}, model=loaded.describe())
    save_json(staging / "manifest.json", info)
    return info


def run(args: argparse.Namespace) -> int:
    from ..core.errors import VistoolError
    from ..core.imageio import load_tensor
    from ..outputs import resolve_run_dir, run_directory
    from ..synthesize.style import style_transfer

    check_out(args.out)
    if args.fast:
        return _run_fast(args)
    if len(args.images) < 2:
        raise VistoolError("give a CONTENT and at least one STYLE image (or --fast MODEL to "
                           "stylise images with a trained fast-style network)")
    longer = args.scales[-1] if args.scales else (args.size or 512)
    content = load_tensor(args.images[0], longer)
    styles = [load_tensor(path, longer) for path in args.images[1:]]
    loaded = load(args)
    start = time.perf_counter()
    result = style_transfer(
        loaded, content, styles, args.style_weights, args.content_layers, args.style_layers,
        args.content_weight, args.style_weight, args.tv_weight, args.optimizer, args.steps,
        args.lr, args.init, args.preserve_color, args.scales, args.pooling, args.seed,
        progress=sys.stderr.isatty())
    out_dir = resolve_run_dir(args.out, "style")
    with run_directory(out_dir) as staging:
        info = _write(args, loaded, result, staging, time.perf_counter() - start)
    _report(args, info, out_dir, "result.png, loss.png and manifest.json",
            loaded.weights if loaded.random_weights else None)
    return 0


def _report(args, info: dict, out_dir, written: str, random: str | None) -> None:
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        note = f" (random weights: {random})" if random else ""
        print(f"wrote {written} to {out_dir}{note}")


def _run_fast(args: argparse.Namespace) -> int:
    """``--fast``: every image through the trained transformer network, one PNG each."""
    from ..core.devices import synchronize
    from ..core.imageio import expand_inputs, load_tensor
    from ..core.zoo import load_model
    from ..outputs import manifest, resolve_run_dir, run_directory, save_json, save_png
    from ..synthesize.fast_style import as_stylizer, stylize

    paths = [str(path) for path in expand_inputs(args.images)]
    images = [load_tensor(path, args.size) for path in paths]
    loaded = load_model(args.fast, device=args.device)
    net = as_stylizer(loaded)
    loss_net = loaded.metadata.get("loss_network") or {}
    random = loss_net.get("weights") if loss_net.get("random_weights") else None
    if random:
        print(f"vistool: warning: {args.fast} was trained against a random-weight VGG16 "
              f"({random}): its style is not what an ImageNet-trained one gives",
              file=sys.stderr)
    out_dir = resolve_run_dir(args.out, "style")
    outputs, seconds = [], []
    with run_directory(out_dir) as staging:
        for index, (path, image) in enumerate(zip(paths, images)):
            synchronize(loaded.device)
            start = time.perf_counter()
            result = stylize(net, image)
            synchronize(loaded.device)  # CUDA runs asynchronously: time the work, not its launch
            seconds.append(time.perf_counter() - start)
            name = f"{index:03d}-{slug(Path(path).stem)}.png"
            save_png(staging / name, result[0])
            outputs.append({"png": name, "input": path, "size": list(result.shape[-2:]),
                            "caption": f"fast style {'x'.join(map(str, result.shape[-2:]))}"})
        model = {**loaded.describe(), "loss_network": loss_net,
                 "styles": loaded.metadata.get("styles"), "random_weights": bool(random)}
        info = manifest("style", paths, {"fast": args.fast, "size": args.size,
                                               "device": str(loaded.device)}, outputs,
                        timings={"seconds": [round(s, 4) for s in seconds]}, model=model)
        save_json(staging / "manifest.json", info)
    _report(args, info, out_dir, f"{len(outputs)} stylised image(s) and manifest.json",
            random)
    return 0
