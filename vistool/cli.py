"""The ``vistool`` command line: parse, call the library, render, save.

User mistakes (a missing image, an unknown layer, a mismatched checkpoint ...) print one
line ``vistool: error: ...`` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import LayerError, VistoolError

EXIT_USAGE = 2


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", required=True,
                       help="torchvision name (vgg16, resnet50 ...), book model name, a trainers "
                            "checkpoint (.safetensors), path/to/file.py:factory or "
                            "package.module:factory")
    group.add_argument("--weights", default="default",
                       help="'default' (pretrained weights from the torch hub cache, or the "
                            "checkpoint's own), 'none' (random init) or a state-dict file "
                            "(default: %(default)s)")
    group.add_argument("--checkpoint", metavar="FILE",
                       help="weights for a file.py:factory model (same as --weights FILE)")
    group.add_argument("--device", default="auto",
                       help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps "
                            "(default: %(default)s)")
    group.add_argument("--input-size", metavar="SIZE",
                       help="model input as H or C,H,W (default: from the model, else 3,224,224)")
    group.add_argument("--mean", type=_floats, metavar="M1,M2,M3",
                       help="per-channel normalisation mean (default: from the model, else "
                            "ImageNet's)")
    group.add_argument("--std", type=_floats, metavar="S1,S2,S3",
                       help="per-channel normalisation std (default: as --mean)")
    group.add_argument("--classes", metavar="FILE",
                       help="class names, one per line (default: from the weights/checkpoint)")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def _channels(text: str) -> list[int]:
    """``0-31`` / ``0,4,9-12`` -> list of channel indices."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"channels must look like 0-31 or 0,4,9-12, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"no valid channels in {text!r}")
    return out


def _load(args: argparse.Namespace):
    from .zoo import load_model

    weights = args.checkpoint if args.checkpoint else args.weights
    return load_model(args.model, weights=weights, device=args.device,
                      input_size=args.input_size, mean=args.mean, std=args.std,
                      classes=args.classes)


def _cmd_layers(args: argparse.Namespace) -> int:
    loaded = _load(args)
    rows = loaded.layers
    if args.json:
        print(json.dumps([row.to_dict() for row in rows], indent=1))
        return 0
    header = ("name", "type", "output shape", "params")
    table = [(r.name, r.type, "x".join(map(str, r.output_shape)) if r.output_shape else "-",
              f"{r.params:,}") for r in rows]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in table:
        print("  ".join(c.ljust(w) if i < 3 else c.rjust(w)
                        for i, (c, w) in enumerate(zip(row, widths))))
    total = sum(p.numel() for p in loaded.model.parameters())
    size = "x".join(map(str, loaded.input_size))
    try:
        default = loaded.default_layer
    except LayerError:
        default = "none (no layer with a spatial output)"
    print(f"\n{len(rows)} layers, {total:,} parameters, input {size}, "
          f"default target layer: {default}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .zoo import list_models

    groups = list_models()
    if args.json:
        print(json.dumps(groups, indent=1))
        return 0
    for group, names in groups.items():
        print(f"{group} ({len(names)}):")
        print("  " + "\n  ".join(names))
    return 0


def _predictions(loaded, logits, k: int = 5) -> list[list[dict]]:
    """Top-k predictions per image as [{"index", "name", "prob"}]."""
    probs = logits.float().softmax(1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[{"index": int(i), "name": loaded.class_name(int(i)), "prob": round(float(p), 6)}
             for p, i in zip(values, indices)]
            for values, indices in zip(top.values.cpu(), top.indices.cpu())]


def _prepare_images(args: argparse.Namespace):
    """Shared start of the image commands: inputs, model, layers (checked) and every image
    preprocessed before anything is written, so a bad file fails the run up front.
    Returns ``(paths, loaded, layers, batches)`` with ``batches`` yielding
    ``(first_index, batch_on_device)``."""
    import torch
    from tqdm import tqdm

    from .imageio import expand_inputs, load_image
    from .layers import resolve_layers

    paths = expand_inputs(args.images)
    loaded = _load(args)
    layers = args.layer or [loaded.default_layer]
    resolve_layers(loaded.model, layers)
    tensors = [loaded.transform(load_image(p)) for p in paths]

    def batches():
        for first in tqdm(range(0, len(paths), args.batch_size), desc=args.command,
                          file=sys.stderr, disable=len(paths) <= args.batch_size):
            yield first, torch.stack(tensors[first:first + args.batch_size]).to(loaded.device)

    return paths, loaded, layers, batches()


def _cmd_explain(args: argparse.Namespace) -> int:
    """``gradcam`` and ``attribute``: maps per image, overlays, raw arrays, manifest."""
    from .imageio import deprocess
    from .outputs import manifest, resolve_run_dir, run_directory, save_json, save_npy, save_png
    from .render import apply_colormap, enlarge, overlay

    kind = args.command
    paths, loaded, layers, batches = _prepare_images(args)
    target = None if args.target is None else loaded.class_index(args.target)
    out_dir = resolve_run_dir(args.out, kind)
    entries = []
    start = time.perf_counter()
    with run_directory(out_dir) as staging:
        for first, batch in batches:
            if kind == "gradcam":
                from .cam import explain

                result = explain(loaded, batch, args.method, targets=target,
                                 layer=layers if len(layers) > 1 else layers[0],
                                 topk=args.topk, channels=args.channels,
                                 progress=not args.json)
                raw = result.raw  # per layer (N, [k,] h, w)
            else:
                from .attribution import attribute

                result = attribute(loaded, batch, args.method, targets=target,
                                   layer=layers[0], smooth=args.smooth, noise=args.noise,
                                   steps=args.steps, window=args.window, stride=args.stride,
                                   seed=args.seed)
                raw = {"input": result.raw}  # (N, C, H, W)
            maps = result.maps if result.maps.dim() == 4 else result.maps[:, None]
            targets = result.targets.reshape(len(batch), -1)
            probs = result.probs.reshape(len(batch), -1)
            views = deprocess(batch, loaded.mean, loaded.std)
            predictions = _predictions(loaded, result.logits)
            for j in range(len(batch)):
                index = first + j
                stem = f"{index:03d}-{_slug(paths[index].stem)}"
                explained = []
                for t in range(targets.shape[1]):
                    cls = int(targets[j, t])
                    base = f"{stem}_{_slug(args.method)}_c{cls}"
                    heat = maps[j, t]
                    save_png(staging / f"{base}_overlay.png",
                             enlarge(overlay(views[j], heat, args.alpha, args.colormap)))
                    save_png(staging / f"{base}_heatmap.png",
                             enlarge(apply_colormap(heat, args.colormap)))
                    raw_files = []
                    for name, values in raw.items():
                        suffix = "" if len(raw) == 1 else f"_{_slug(name)}"
                        raw_files.append(f"{base}_raw{suffix}.npy")
                        save_npy(staging / raw_files[-1],
                                 values[j, t] if kind == "gradcam" and args.topk else values[j])
                    explained.append({
                        "target": cls, "name": loaded.class_name(cls),
                        "prob": round(float(probs[j, t]), 6), "overlay": f"{base}_overlay.png",
                        "heatmap": f"{base}_heatmap.png", "raw": raw_files,
                        "png": f"{base}_overlay.png",
                        "caption": f"{paths[index].name} · {args.method} · "
                                   f"{loaded.class_name(cls) or cls}"})
                entries.append({"image": str(paths[index]), "predictions": predictions[j],
                                "explanations": explained})
        options = {"model": args.model, "weights": args.checkpoint or args.weights,
                   "method": args.method, "layer": layers, "target": args.target,
                   "device": str(loaded.device), "alpha": args.alpha,
                   "colormap": args.colormap}
        if kind == "gradcam":
            options.update(topk=args.topk, channels=args.channels)
        else:
            options.update(smooth=args.smooth, noise=args.noise, steps=args.steps,
                           window=args.window, stride=args.stride)
        info = manifest(kind, [str(p) for p in paths], options,
                        [e for entry in entries for e in entry["explanations"]],
                        seed=args.seed if kind == "attribute" else None,
                        timings={"seconds": round(time.perf_counter() - start, 4)},
                        method=args.method, layer=layers, target=args.target, images=entries)
        save_json(staging / "manifest.json", info)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"wrote {sum(len(e['explanations']) for e in entries)} {args.method} maps to "
              f"{out_dir}")
    return 0


def _add_explain_options(p: argparse.ArgumentParser, methods, default: str) -> None:
    _add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMG", help="image files or directories")
    p.add_argument("--method", choices=methods, default=default,
                   help="explanation method (default: %(default)s)")
    p.add_argument("--layer", "-l", action="append",
                   help="target layer (default: the model's default layer); repeat to fuse "
                        "several layers")
    p.add_argument("--target", "-t", metavar="IDX|NAME",
                   help="class to explain, by index or name (default: the predicted class)")
    p.add_argument("--alpha", type=float, default=0.5,
                   help="heatmap opacity in the overlay (default: %(default)s)")
    p.add_argument("--colormap", default="jet", help="matplotlib colormap (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="images per forward pass (default: %(default)s)")
    p.add_argument("--out", "-o", help="output directory, must be new or empty "
                                       "(default: vistool-out/<timestamp>-<command>)")
    p.add_argument("--json", action="store_true",
                   help="also print the manifest (predictions, files, timings) to stdout")


def _cmd_train(args: argparse.Namespace) -> int:
    from trainers.recipes import RECIPES, run_recipe

    if args.list or not args.recipe:
        width = max(len(n) for n in RECIPES)
        print(f"{'recipe':<{width}}  {'model':<16} {'dataset':<12} expected")
        for name, recipe in RECIPES.items():
            print(f"{name:<{width}}  {recipe.arch:<16} {recipe.dataset:<12} {recipe.expected}")
        return 0
    out = Path(args.out) if args.out else Path("runs") / args.recipe
    if out.exists() and not out.is_dir():
        raise VistoolError(f"--out {str(out)!r} is a file; give a directory for the run")
    if out.exists() and any(out.iterdir()) and not args.resume:
        raise VistoolError(f"run directory {str(out)!r} is not empty; pass --resume to "
                           "continue it or --out for a new one")
    best = run_recipe(args.recipe, out, dataset=args.dataset, data_dir=args.data_dir,
                      download=args.download, resume=args.resume,
                      pretrained=False if args.no_pretrained else None, epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=args.device, amp=args.amp, workers=args.workers,
                      progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        shown = " ".join(f"{k}={best[k]:.4f}" for k in ("val_loss", "val_acc") if k in best)
        print(f"best epoch {best.get('epoch')}: {shown}; checkpoints in {out}")
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    import subprocess

    import dashboard

    app = Path(dashboard.__file__).with_name("app.py")
    command = [sys.executable, "-m", "streamlit", "run", str(app), "--server.port",
               str(args.port), "--server.headless", "true" if args.headless else "false",
               "--browser.gatherUsageStats", "false"]
    return subprocess.call(command)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "root"


def _cmd_activations(args: argparse.Namespace) -> int:
    from .activations import activations, channel_stats
    from .outputs import manifest, resolve_run_dir, run_directory, save_json, save_npy, save_png
    from .render import channel_grid

    paths, loaded, layers, batches = _prepare_images(args)
    start = time.perf_counter()
    outputs = []
    out_dir = resolve_run_dir(args.out, "activations")
    with run_directory(out_dir) as staging:
        for first, batch in batches:
            result = activations(loaded, batch, layers)
            for j in range(len(batch)):
                index = first + j
                stem = f"{index:03d}-{_slug(paths[index].stem)}"
                for layer in layers:
                    act = result.layers[layer][j]
                    count = act.shape[0]
                    channels = args.channels
                    if channels is not None and max(channels) >= count:
                        raise VistoolError(f"layer {layer!r} has {count} channels; --channels "
                                           f"must be within 0-{count - 1}")
                    base = f"{stem}_{_slug(layer)}"
                    save_npy(staging / f"{base}.npy", act)
                    grid = channel_grid(act, channels, normalization=args.normalization,
                                        colormap=args.colormap)
                    save_png(staging / f"{base}.png", grid)
                    stats = {k: v.tolist() for k, v in channel_stats(act).items()}
                    outputs.append({"image": str(paths[index]), "layer": layer,
                                    "shape": list(act.shape), "png": f"{base}.png",
                                    "npy": f"{base}.npy",
                                    "caption": f"{paths[index].name} · {layer}",
                                    "channel_stats": stats})
        info = manifest(
            "activations", [str(p) for p in paths],
            {"model": args.model, "weights": args.checkpoint or args.weights, "layers": layers,
             "channels": args.channels, "normalization": args.normalization,
             "colormap": args.colormap, "device": str(loaded.device)},
            outputs, timings={"seconds": round(time.perf_counter() - start, 4)})
        save_json(staging / "manifest.json", info)
    print(f"wrote {len(outputs)} activation grids to {out_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``vistool`` command (all subcommands)."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="vistool", description="Make trained convolutional networks explain themselves.")
    parser.add_argument("--version", action="version", version=f"vistool {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list the model names --model accepts",
                       description="List torchvision classification models and vistool's book "
                                   "models. --model also takes checkpoints and file.py:factory.")
    p.add_argument("--json", action="store_true", help="print {group: [names]} as JSON")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("layers", help="print the layer table of a model",
                       description="Print every layer with its type, output shape and "
                                   "parameter count (one dry forward pass).")
    _add_model_options(p)
    p.add_argument("--json", action="store_true",
                   help="print a JSON list of {name, type, output_shape, params, calls}")
    p.set_defaults(func=_cmd_layers)

    p = sub.add_parser("activations", help="render the activations of layers for images",
                       description="Write a channel grid PNG, the raw .npy and channel "
                                   "statistics per image and layer, plus manifest.json.")
    _add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMG", help="image files or directories")
    p.add_argument("--layer", "-l", action="append",
                   help="layer name (repeatable; default: the model's default target layer)")
    p.add_argument("--channels", type=_channels, metavar="RANGE",
                   help="channels to show, e.g. 0-31 or 0,4,9-12 (default: all)")
    p.add_argument("--normalization", choices=("channel", "layer"), default="channel",
                   help="scale each channel on its own or all by one range (default: %(default)s)")
    p.add_argument("--colormap", default="viridis",
                   help="matplotlib colormap (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="images per forward pass (default: %(default)s)")
    p.add_argument("--out", "-o",
                   help="output directory, must be new or empty "
                        "(default: vistool-out/<timestamp>-activations)")
    p.set_defaults(func=_cmd_activations)

    from .attribution import ATTRIBUTION_METHODS
    from .cam import CAM_METHODS

    p = sub.add_parser("gradcam", help="class activation maps (Grad-CAM family)",
                       description="Write per image an overlay PNG, a heatmap PNG and the raw "
                                   "layer-resolution map (.npy), and manifest.json with the "
                                   "top-5 predictions.")
    _add_explain_options(p, CAM_METHODS, "gradcam")
    p.add_argument("--topk", type=int, metavar="K",
                   help="explain the K best classes of each image (instead of --target)")
    p.add_argument("--channels", type=int, metavar="K",
                   help="scorecam: use only the K highest-variance channels (Faster Score-CAM)")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("attribute", help="pixel attributions (saliency, IG, occlusion ...)",
                       description="Write per image an overlay PNG, a heatmap PNG and the raw "
                                   "attribution (.npy, C x H x W), and manifest.json.")
    _add_explain_options(p, ATTRIBUTION_METHODS, "saliency")
    p.add_argument("--smooth", type=int, default=0, metavar="N",
                   help="SmoothGrad: average N noisy samples (default: off)")
    p.add_argument("--noise", type=float, default=0.15,
                   help="SmoothGrad noise std as a fraction of the input range "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=int, default=50,
                   help="integration steps of ig (default: %(default)s)")
    p.add_argument("--window", type=int, default=16,
                   help="occlusion patch size in pixels (default: %(default)s)")
    p.add_argument("--stride", type=int, default=8,
                   help="occlusion patch step in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the SmoothGrad noise (default: %(default)s)")
    p.set_defaults(func=_cmd_explain)

    p = sub.add_parser("train", help="train a textbook model (see --list)",
                       description="Train a named recipe; writes best/last checkpoints "
                                   "(.safetensors, open them with --model), metrics.jsonl, "
                                   "metrics.png and sample grids. Multi-GPU / multi-node: "
                                   "torchrun --nproc_per_node N -m vistool train RECIPE ...")
    p.add_argument("recipe", nargs="?", help="recipe name, e.g. lenet-digits, shapes-cnn")
    p.add_argument("--list", action="store_true",
                   help="list recipes with model, dataset and expected result")
    p.add_argument("--dataset", help="swap the data where it fits (mnist, fashion-mnist, "
                                     "digits; cifar10, shapes, imagefolder)")
    p.add_argument("--data-dir", help="where datasets live (default: $VISTOOL_DATA or ./data)")
    p.add_argument("--download", action="store_true",
                   help="download torchvision datasets that are missing")
    p.add_argument("--epochs", type=int, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=int,
                   help="global batch size, split over DDP processes (default: the recipe's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole run "
                                                       "(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 autocast (fp16 + grad scaling on older GPUs)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes (default: %(default)s)")
    p.add_argument("--out", "-o", help="run directory (default: runs/<recipe>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch")
    p.add_argument("--no-pretrained", action="store_true",
                   help="transfer recipes: start from random weights instead of the "
                        "torchvision weights")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("dashboard", help="open the Streamlit dashboard",
                       description="Start the Streamlit dashboard (layers, activations ...).")
    p.add_argument("--port", type=int, default=8501, help="port to serve on (default: %(default)s)")
    p.add_argument("--headless", action="store_true",
                   help="do not open a browser (for servers)")
    p.set_defaults(func=_cmd_dashboard)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``vistool`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VistoolError as exc:
        message = " ".join(str(exc).split())
        print(f"vistool: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("vistool: interrupted", file=sys.stderr)
        return 130
