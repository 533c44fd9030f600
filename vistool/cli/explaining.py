"""The run shared by ``gradcam`` and ``attribute``: options, maps per image, files, manifest."""

from __future__ import annotations

import argparse
import json
import time

from ..core.errors import VistoolError
from . import segmentation, similarity
from .options import (
    IMAGES_HELP,
    add_many_options,
    add_model_options,
    add_out_option,
    colormap,
    fraction,
    positive_int,
    predictions,
    prepare_images,
    slug,
)


def add_explain_options(p: argparse.ArgumentParser, methods, default: str) -> None:
    """Model options, images, ``--method --layer --target --alpha --colormap --batch-size
    --out --json``."""
    add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMG", help=IMAGES_HELP)
    p.add_argument("--method", choices=methods, default=default,
                   help="explanation method (default: %(default)s)")
    p.add_argument("--layer", "-l", action="append",
                   help="target layer (default: the model's default layer); repeat to fuse "
                        "several layers")
    p.add_argument("--target", "-t", metavar="IDX|NAME",
                   help="class to explain, by index or name (default: the predicted class; "
                        "for a segmentation model, the class with the most pixels other than "
                        "the background)")
    p.add_argument("--alpha", type=fraction, default=0.5,
                   help="heatmap opacity in the overlay, 0 to 1 (default: %(default)s)")
    p.add_argument("--colormap", type=colormap, default="jet",
                   help="matplotlib colormap (default: %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=8,
                   help="images per forward pass (default: %(default)s)")
    add_out_option(p, p.prog.split()[-1])
    p.add_argument("--json", action="store_true",
                   help="also print the manifest (predictions, files, timings) to stdout")
    add_many_options(p)


def run(args: argparse.Namespace, compute, options: dict, seed: int | None = None) -> int:
    """Explain every image with ``compute(loaded, batch, layers, target) -> (result, raw)``,
    write overlays, heatmaps, raw maps and the manifest (``options`` are the command's own)."""
    from ..data.sources import is_collection
    from ..outputs import manifest, resolve_run_dir, run_directory, save_json

    if is_collection(args.images):
        from . import streaming

        for flag in ("similar_to", "region", "embedding"):
            if getattr(args, flag, None):
                raise VistoolError(f"--{flag.replace('_', '-')} is not yet supported for "
                                   "folders, globs, lists and datasets; name the image files")

        def process(loaded, batch, keys, layers, target, out):
            if loaded.task == "segmentation":
                raise VistoolError("folders, globs, lists and datasets of images are not yet "
                                   "explained for segmentation models; name the image files")
            result, raw = compute(loaded, batch, layers, target)
            return streaming.map_rows(args, loaded, keys, batch, result, raw, layers, out)

        return streaming.run(args, process, streaming.MAP_FIELDS,
                             {**options, "method": args.method}, seed)
    paths, loaded, layers, batches = prepare_images(args)
    region = segmentation.check(args, loaded)
    similar = similarity.target(args, loaded)
    target = None if args.target is None else loaded.class_index(args.target)
    out_dir = resolve_run_dir(args.out, args.command)
    entries = []
    start = time.perf_counter()
    with run_directory(out_dir) as staging:
        for first, batch in batches:
            names = paths[first:first + len(batch)]
            entries.extend(_explain_batch(args, staging, loaded, names, first, batch, layers,
                                          compute, target, region, similar))
        options = {"model": args.model, "weights": args.checkpoint or args.weights,
                   "method": args.method, "layer": layers, "target": args.target,
                   "device": str(loaded.device), "alpha": args.alpha,
                   "colormap": args.colormap, **options}
        info = manifest(args.command, [str(p) for p in paths], options,
                        [e for entry in entries for e in entry["explanations"]], seed=seed,
                        timings={"seconds": round(time.perf_counter() - start, 4)},
                        method=args.method, layer=layers, target=args.target, images=entries,
                        model=loaded.describe())
        save_json(staging / "manifest.json", info)
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        print(f"wrote {sum(len(e['explanations']) for e in entries)} {args.method} maps to "
              f"{out_dir}")
    return 0


def _explain_batch(args, staging, loaded, names, first, batch, layers, compute, target,
                   region, similar) -> list[dict]:
    """Explain one batch for a class, a segmentation class over a region, or a similarity,
    and save its files; returns the images' manifest entries."""
    if loaded.task == "segmentation":
        chosen, scores = segmentation.target(loaded, batch, target, region)
        result, raw = compute(loaded, batch, layers, chosen)
        return segmentation.save_batch(args, staging, loaded, names, first, batch, result, raw,
                                       chosen, scores, _save_map)
    if similar is not None:
        result, raw = compute(loaded, batch, layers, similar)
        return similarity.save_batch(args, staging, loaded, names, first, batch, result, raw,
                                     similar, _save_map)
    result, raw = compute(loaded, batch, layers, target)
    return _save_batch(args, staging, loaded, names, first, batch, result, raw)


def _save_batch(args, staging, loaded, paths, first, batch, result, raw) -> list[dict]:
    from ..core.imageio import deprocess

    maps = result.maps if result.maps.dim() == 4 else result.maps[:, None]
    targets = result.targets.reshape(len(batch), -1)
    probs = result.probs.reshape(len(batch), -1)
    views = deprocess(batch, loaded.mean, loaded.std)
    top = predictions(loaded, result.logits)
    entries = []
    for j, path in enumerate(paths):
        stem = f"{first + j:03d}-{slug(path.stem)}"
        explained = [_save_map(args, staging, loaded, path, stem, views[j], maps[j, t],
                               int(targets[j, t]), float(probs[j, t]),
                               {name: values[j] for name, values in raw.items()}, t)
                     for t in range(targets.shape[1])]
        entries.append({"image": str(path), "predictions": top[j], "explanations": explained})
    return entries


def _save_map(args, staging, loaded, path, stem, view, heat, cls, prob, raw, t) -> dict:
    from ..drawing import apply_colormap, enlarge, overlay
    from ..outputs import save_npy, save_png

    class_name = loaded.class_name(cls) if isinstance(cls, int) else None  # (else a tag)
    base = f"{stem}_{slug(args.method)}_{f'c{cls}' if isinstance(cls, int) else cls}"
    save_png(staging / f"{base}_overlay.png",
             enlarge(overlay(view, heat, args.alpha, args.colormap)))
    save_png(staging / f"{base}_heatmap.png", enlarge(apply_colormap(heat, args.colormap)))
    raw_files = []
    for name, values in raw.items():
        suffix = "" if len(raw) == 1 else f"_{slug(name)}"
        raw_files.append(f"{base}_raw{suffix}.npy")
        save_npy(staging / raw_files[-1], values[t] if getattr(args, "topk", None) else values)
    return {"target": cls, "name": class_name, "prob": round(prob, 6),
            "overlay": f"{base}_overlay.png", "heatmap": f"{base}_heatmap.png",
            "raw": raw_files, "png": f"{base}_overlay.png",
            "caption": f"{path.name} · {args.method} · {class_name or cls}"}
