"""``vistool activations``: channel grids, raw arrays and channel statistics per layer."""

from __future__ import annotations

import argparse
import time

from ..core.errors import VistoolError
from ..explainers.names import LAYOUTS
from .options import (
    IMAGES_HELP,
    add_many_options,
    add_model_options,
    add_out_option,
    channel_list,
    colormap,
    positive_int,
    predictions,
    prepare_images,
    slug,
)


def add_parser(sub) -> None:
    p = sub.add_parser("activations", help="render the activations of layers for images",
                       description="Write a channel grid PNG, the raw .npy and channel "
                                   "statistics per image and layer, plus manifest.json.")
    add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMG", help=IMAGES_HELP)
    p.add_argument("--layer", "-l", action="append",
                   help="layer name (repeatable; default: the model's default target layer)")
    p.add_argument("--channels", type=channel_list, metavar="RANGE",
                   help="channels to show, e.g. 0-31 or 0,4,9-12 (default: all)")
    p.add_argument("--normalization", choices=("channel", "layer"), default="channel",
                   help="scale each channel on its own or all by one range (default: %(default)s)")
    p.add_argument("--colormap", type=colormap, default="viridis",
                   help="matplotlib colormap (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="images per forward pass (default: %(default)s)")
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="how the layers hold their grid: nchw, nhwc (channels-last, Swin) or "
                        "tokens ((N, [class token +] H*W, D), ViT), shown as channel grids; "
                        "auto detects it (default: %(default)s)")
    add_out_option(p, "activations")
    add_many_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.sources import is_collection
    from ..explainers.activations import activations
    from ..outputs import manifest, resolve_run_dir, run_directory, save_json

    if is_collection(args.images):
        return _run_stream(args)
    paths, loaded, layers, batches = prepare_images(args)
    start = time.perf_counter()
    outputs = []
    out_dir = resolve_run_dir(args.out, "activations")
    with run_directory(out_dir) as staging:
        for first, batch in batches:
            result = activations(loaded, batch, layers, args.layout)
            for j in range(len(batch)):
                for layer in layers:
                    outputs.append(_save_layer(args, staging, paths[first + j], first + j,
                                               layer, result.layers[layer][j]))
                    outputs[-1]["layout"] = result.layouts[layer]
        info = manifest(
            "activations", [str(p) for p in paths],
            {"model": args.model, "weights": args.checkpoint or args.weights, "layers": layers,
             "channels": args.channels, "normalization": args.normalization,
             "colormap": args.colormap, "layout": args.layout, "device": str(loaded.device)},
            outputs, timings={"seconds": round(time.perf_counter() - start, 4)},
            model=loaded.describe())
        save_json(staging / "manifest.json", info)
    print(f"wrote {len(outputs)} activation grids to {out_dir}")
    return 0


def _check_channels(args, layer: str, act) -> None:
    """Refuse ``--channels`` beyond the layer's channel count, in one line."""
    count = act.shape[0]
    if args.channels is not None and max(args.channels) >= count:
        raise VistoolError(f"layer {layer!r} has {count} channels; --channels "
                           f"must be within 0-{count - 1}")


def _save_layer(args, staging, path, index: int, layer: str, act) -> dict:
    from ..drawing import channel_grid
    from ..explainers.activations import channel_stats
    from ..outputs import save_npy, save_png

    _check_channels(args, layer, act)
    base = f"{index:03d}-{slug(path.stem)}_{slug(layer)}"
    save_npy(staging / f"{base}.npy", act)
    save_png(staging / f"{base}.png", channel_grid(act, args.channels,
                                                   normalization=args.normalization,
                                                   colormap=args.colormap))
    stats = {k: v.tolist() for k, v in channel_stats(act).items()}
    return {"image": str(path), "layer": layer, "shape": list(act.shape), "png": f"{base}.png",
            "npy": f"{base}.npy", "caption": f"{path.name} · {layer}", "channel_stats": stats}


FIELDS = ["path", "status", "error", "predicted", "predicted_name", "predicted_prob", "layer",
          "shape", "layout", "mean", "max", "top_channel", "grid", "npy"]


def _run_stream(args: argparse.Namespace) -> int:
    """Folders, lists and datasets: one index row per image (several layers: values joined
    by ';'), grids and arrays unless ``--no-images``."""
    from ..explainers.activations import activations
    from . import streaming

    def process(loaded, batch, keys, layers, _target, out):
        result = activations(loaded, batch, layers, args.layout)
        top = predictions(loaded, result.logits, 1) if result.logits is not None else None
        rows = []
        for j, key in enumerate(keys):
            cells = [_cells(args, out, key, layer, result.layers[layer][j],
                            result.layouts[layer]) for layer in layers]
            row = {k: ";".join(str(c[k]) for c in cells) for k in cells[0]}
            if top is not None and len(top[j]) and top[j][0]["index"] is not None:
                row.update(predicted=top[j][0]["index"], predicted_prob=top[j][0]["prob"],
                           predicted_name=top[j][0]["name"] or "")
            rows.append({"path": key, "status": "ok", "error": "", **row})
        return rows

    options = {"channels": args.channels, "normalization": args.normalization,
               "colormap": args.colormap, "layout": args.layout}
    return streaming.run(args, process, FIELDS, options)


def _cells(args, out, key: str, layer: str, act, layout) -> dict:
    from ..drawing import channel_grid
    from ..explainers.activations import channel_stats
    from ..outputs import save_npy, save_png
    from .streaming import file_stem

    _check_channels(args, layer, act)
    stats = channel_stats(act)
    cell = {"layer": layer, "shape": "x".join(map(str, act.shape)), "layout": layout or "",
            "mean": round(float(stats["mean"].mean()), 6),
            "max": round(float(stats["max"].max()), 6),
            "top_channel": int(stats["mean"].argmax()), "grid": "", "npy": ""}
    if not args.no_images:
        base = f"{file_stem(key)}_{slug(layer)}"
        save_npy(out / f"{base}.npy", act)
        save_png(out / f"{base}.png", channel_grid(act, args.channels,
                                                   normalization=args.normalization,
                                                   colormap=args.colormap))
        cell.update(grid=f"{base}.png", npy=f"{base}.npy")
    return cell
