"""``vistool dff``: Deep Feature Factorization of a layer over the given images, one colour
per concept."""

from __future__ import annotations

import argparse
import time

from .options import IMAGES_HELP, add_model_options, add_out_option, positive_int, slug


def add_parser(sub) -> None:
    p = sub.add_parser("dff", help="factorise a layer's activations into concepts (Deep "
                                   "Feature Factorization)",
                       description="Factorise the activations of a layer over all the given "
                                   "images together into concepts (non-negative matrix "
                                   "factorisation, as pytorch-grad-cam's), and write per image "
                                   "a PNG with one colour per concept and the raw concept maps "
                                   "(.npy), plus manifest.json with each concept's colour and "
                                   "top classes (from the layer's GAP + linear head).")
    add_model_options(p)
    p.add_argument("images", nargs="+", metavar="IMG", help=IMAGES_HELP)
    p.add_argument("--layer", "-l", help="the layer (default: the model's default target layer)")
    p.add_argument("--concepts", type=positive_int, default=5,
                   help="how many concepts (at most the layer's channels; default: "
                        "%(default)s)")
    p.add_argument("--top", type=positive_int, default=3,
                   help="classes listed per concept (default: %(default)s)")
    add_out_option(p, "dff")
    p.set_defaults(func=run, batch_size=1 << 30)  # every image in one factorisation


def run(args: argparse.Namespace) -> int:
    import matplotlib

    from ..drawing import enlarge
    from ..explainers.factorization import concept_picture, factorize
    from ..outputs import manifest, resolve_run_dir, run_directory, save_json, save_npy, save_png
    from .options import prepare_images

    args.layer = [args.layer] if args.layer else None
    paths, loaded, layers, batches = prepare_images(args)
    start = time.perf_counter()
    _, batch = next(batches)
    found = factorize(loaded, batch, layers[0], concepts=args.concepts)
    rainbow = matplotlib.colormaps["gist_rainbow"]
    colors = [rainbow(i / args.concepts)[:3] for i in range(args.concepts)]
    concepts = [{"concept": i, "color": matplotlib.colors.to_hex(color),
                 "top": _top(loaded, found.scores[i], args.top) if found.scores is not None
                 else []} for i, color in enumerate(colors)]
    out_dir = resolve_run_dir(args.out, "dff")
    outputs = []
    with run_directory(out_dir) as staging:
        for i, path in enumerate(paths):
            base = f"{i:03d}-{slug(path.stem)}_{slug(found.layer)}"
            picture = concept_picture(found.inputs[i].float().cpu(),
                                      found.maps[i].float().cpu(), colors=colors)
            save_png(staging / f"{base}.png", enlarge(picture, 224))
            save_npy(staging / f"{base}.npy", found.raw[i])
            outputs.append({"image": str(path), "png": f"{base}.png", "npy": f"{base}.npy"})
        save_json(staging / "manifest.json", manifest(
            "dff", [str(p) for p in paths],
            {"model": args.model, "weights": args.checkpoint or args.weights,
             "layer": found.layer, "concepts": args.concepts, "device": str(loaded.device)},
            outputs, timings={"seconds": round(time.perf_counter() - start, 4)},
            model=loaded.describe(), nmf_rounds=found.rounds, concept_classes=concepts))
    for concept in concepts:
        names = ", ".join(f"{c['name'] or c['index']} {c['prob']:.1%}" for c in concept["top"])
        print(f"concept {concept['concept']} ({concept['color']}): {names or 'no head'}")
    print(f"wrote {len(outputs)} concept pictures to {out_dir}")
    return 0


def _top(loaded, scores, k: int) -> list[dict]:
    """The concept's k best classes, by the softmax of its scores."""
    probs = scores.float().softmax(0)
    top = probs.topk(min(k, len(probs)))
    return [{"index": int(i), "name": loaded.class_name(int(i)), "prob": round(float(p), 6)}
            for p, i in zip(top.values.cpu(), top.indices.cpu())]
