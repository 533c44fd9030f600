"""``vistool evaluate``: how faithful and how well-placed each method's explanations are."""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings

from ..core.errors import VistoolError
from ..evaluate.names import EVAL_METHODS, LOCALISATION, METRICS
from . import cli_message
from .options import add_model_options, add_out_option, non_negative, positive_int, status

DEFAULT_METHODS = "gradcam,gradcam++,layercam,saliency,guided-backprop,random"
BASELINE_CHOICES = ("rise", "constant", "blur", "mean")


def _names(allowed, what: str):
    def parse(text: str) -> list[str]:
        from ..core.errors import suggestion

        items = [item.strip() for item in text.split(",") if item.strip()]
        for item in items:
            if item not in allowed:
                raise argparse.ArgumentTypeError(f"unknown {what} {item!r}"
                                                 + suggestion(item, allowed, f"{what}s"))
        if not items:
            raise argparse.ArgumentTypeError(f"give at least one {what}")
        return list(dict.fromkeys(items))
    return parse


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="score explanation methods: faithfulness, localisation, sanity",
        description="Explain a labelled set of images with each method and score every map: "
                    "deletion/insertion AUC, average drop/increase in confidence, ROAD, "
                    "pointing game, energy pointing game, relevance mass, IoU, sparseness; "
                    "optionally the parameter-randomisation sanity check. Writes a table "
                    "(stdout, results.md, results.json with mean, std and a 95%% bootstrap "
                    "interval), per_image.csv, curve plots, example maps and manifest.json.")
    add_model_options(p)
    p.add_argument("--dataset", default="shapes", metavar="shapes|imagefolder:DIR",
                   help="shapes (the shapes recipe's validation scenes, with boxes and masks) "
                        "or imagefolder:DIR (labels from class-named subfolders, else the "
                        "predictions) (default: %(default)s)")
    p.add_argument("--masks", metavar="DIR",
                   help="object masks for imagefolder (non-zero = object), named as the "
                        "images: DIR/a/b.png or DIR/b.png for a/b.jpg")
    p.add_argument("--limit", type=positive_int, default=64,
                   help="number of images (default: %(default)s)")
    p.add_argument("--methods", type=_names(EVAL_METHODS, "method"), default=DEFAULT_METHODS,
                   help="comma-separated, from " + ", ".join(EVAL_METHODS) + " (random: "
                        "uniform noise maps, the chance level) (default: %(default)s)")
    p.add_argument("--metrics", type=_names(METRICS, "metric"),
                   help="comma-separated, from " + ", ".join(METRICS) + " (default: all; "
                        "without masks, all but " + ", ".join(LOCALISATION) + ")")
    p.add_argument("--layer", "-l", help="CAM layer (default: the model's default layer)")
    p.add_argument("--steps", type=positive_int, default=24,
                   help="deletion/insertion steps (default: %(default)s)")
    p.add_argument("--baseline", choices=BASELINE_CHOICES, default="rise",
                   help="what deleted pixels become and insertion starts from: rise (0, the "
                        "normalisation mean, for deletion; a blur for insertion), constant "
                        "(0), blur or mean (default: %(default)s)")
    p.add_argument("--tolerance", type=non_negative(int),
                   help="pointing-game tolerance in pixels (default: 15 at 224, scaled to "
                        "the input size)")
    p.add_argument("--sanity", action="store_true",
                   help="also run the cascading parameter-randomisation check per method "
                        "(a forward and backward per layer)")
    p.add_argument("--examples", type=non_negative(int), default=6,
                   help="images shown side by side with every method's map (default: "
                        "%(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=64,
                   help="perturbed images per forward pass (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the shapes scenes, random maps and all noise (default: "
                        "%(default)s)")
    add_out_option(p, "evaluate")
    p.add_argument("--json", action="store_true",
                   help="print results.json instead of the Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..evaluate.data import load_eval_set
    from ..evaluate.localisation import default_tolerance
    from ..evaluate.report import markdown_table
    from ..evaluate.suite import evaluate
    from ..outputs import resolve_run_dir, run_directory
    from .options import check_out, load

    check_out(args.out)
    loaded = load(args)
    data = load_eval_set(loaded, args.dataset, args.masks, args.limit, args.seed)
    metrics = args.metrics or [m for m in METRICS if data.masks is not None or
                               data.boxes is not None or m not in LOCALISATION]
    if data.masks is None and data.boxes is None and set(metrics) & set(LOCALISATION):
        raise VistoolError("localisation metrics need masks: the shapes data, or --masks DIR "
                           "for an image folder")
    tolerance = (args.tolerance if args.tolerance is not None
                 else default_tolerance(tuple(data.images.shape[2:])))
    baseline = None if args.baseline == "rise" else args.baseline
    status(f"evaluating {len(args.methods)} methods on {len(data.names)} images …")
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ev = evaluate(loaded, data.images, data.labels, args.methods, metrics,
                      masks=data.masks, boxes=data.boxes, layer=args.layer, steps=args.steps,
                      baseline=baseline, tolerance=tolerance, sanity=args.sanity,
                      batch_size=args.batch_size, seed=args.seed,
                      progress=sys.stderr.isatty() and not args.json)
    seconds = time.perf_counter() - start
    for message in dict.fromkeys(cli_message(w.message) for w in caught):
        print(f"vistool: warning: {message}", file=sys.stderr)
    summary = ev.summary(seed=args.seed)
    table = markdown_table(summary, metrics)
    out_dir = resolve_run_dir(args.out, "evaluate")
    options = {"dataset": args.dataset, "masks": args.masks, "limit": args.limit,
               "methods": args.methods, "metrics": metrics, "layer": args.layer,
               "steps": args.steps, "baseline": args.baseline, "tolerance": tolerance,
               "sanity": args.sanity, "targets": "labels" if data.labels is not None
               else "predicted"}
    with run_directory(out_dir) as staging:
        info = _write(staging, args, loaded, data, ev, summary, table, options, seconds)
    print(json.dumps(info["results"], indent=1) if args.json else table)
    if not args.json:
        print(f"wrote the evaluation to {out_dir}")
    return 0


def _write(staging, args, loaded, data, ev, summary, table, options, seconds) -> dict:
    from ..outputs import manifest, save_json, write_gallery

    results = {**summary, "images": len(data.names), "model": loaded.describe()}
    save_json(staging / "results.json", results)
    (staging / "results.md").write_text(table + "\n")
    _per_image_csv(staging / "per_image.csv", data, ev)
    figures = _figures(staging, args, loaded, data, ev)
    info = manifest("evaluate", [args.dataset], {"model": args.model, "weights":
                    args.checkpoint or args.weights, "device": str(loaded.device), **options},
                    figures, seed=args.seed, timings={"seconds": round(seconds, 3)},
                    model=loaded.describe(), results=results)
    save_json(staging / "manifest.json", info)
    write_gallery(staging, title=f"vistool evaluate: {args.model}")
    return info


def _per_image_csv(path, data, ev) -> None:
    import csv

    methods = list(ev.values)
    metrics = list(ev.values[methods[0]]) if methods else []
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "target", "method", *metrics])
        targets = data.labels.tolist() if data.labels is not None else [""] * len(data.names)
        for method in methods:
            columns = [ev.values[method][m].tolist() for m in metrics]
            for i, name in enumerate(data.names):
                writer.writerow([name, targets[i], method,
                                 *(f"{c[i]:.6g}" for c in columns)])


def _figures(staging, args, loaded, data, ev) -> list[dict]:
    from ..drawing import line_chart
    from ..evaluate.report import curve_panels, sanity_panels
    from ..outputs import save_png

    figures = [{"table": "results.md", "caption": f"{len(data.names)} images: mean ± std "
                "[95% bootstrap interval]; ↑ higher is better, ↓ lower"}]
    for panel in curve_panels(ev):  # one readable chart per curve, not a strip of four
        name = f"curve-{panel['title']}.png"
        save_png(staging / name, line_chart([panel]))
        figures.append({"png": name, "chart": True,
                        "caption": f"{panel['title']}: the mean curve of each method"})
    if ev.sanity:
        for panel, what in zip(sanity_panels(ev), ("spearman", "ssim")):
            save_png(staging / f"sanity-{what}.png", line_chart([panel]))
            figures.append({"png": f"sanity-{what}.png", "chart": True, "caption":
                            f"cascading randomisation, top layer first: {panel['title']}"})
    if args.examples:
        save_png(staging / "examples.png", _examples(loaded, data, ev, args.examples))
        figures.append({"png": "examples.png", "caption": "rows: images; columns: the "
                                                          "image, then " + ", ".join(ev.maps)})
    return figures


def _examples(loaded, data, ev, count: int):
    import torch

    from ..core.imageio import deprocess
    from ..drawing import image_grid, overlay

    count = min(count, len(data.names))
    views = deprocess(data.images[:count], loaded.mean, loaded.std).cpu()
    tiles = []
    for i in range(count):
        tiles.append(views[i])
        tiles += [overlay(views[i], maps[i].cpu().float(), 0.5) for maps in ev.maps.values()]
    return image_grid(torch.stack(tiles), cols=1 + len(ev.maps), cell=128)
