"""``vistool generate``: what an autoencoder, VAE or GAN learnt — samples, reconstructions,
interpolations, latent traversals, the latent scatter of a dataset, the discriminator's
scores, and a run's sample grids over its epochs."""

from __future__ import annotations

import argparse
import json

from .options import add_model_options, add_out_option, floats, load, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser(
        "generate", help="look inside autoencoders, VAEs and GANs",
        description="Write for a generative checkpoint: a sample grid from fixed seeds (VAE, "
                    "GAN), reconstructions of dataset images (autoencoders, VAE), and on "
                    "request interpolations, a traversal of one latent dimension, the latent "
                    "scatter of a dataset and the strip of a run's sample grids; PNGs, .npy "
                    "codes and manifest.json.")
    add_model_options(p)
    p.add_argument("--samples", type=positive_int, default=64,
                   help="images drawn from the prior (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the prior's codes: the same seed gives the same grid for "
                        "every checkpoint (default: %(default)s)")
    p.add_argument("--dataset", choices=("digits",), default="digits",
                   help="images to reconstruct, encode and interpolate (default: digits)")
    p.add_argument("--interpolate", type=positive_int, metavar="ROWS",
                   help="ROWS interpolations, each between two dataset images' codes (a GAN: "
                        "two seeded latents); spherical for VAE and GAN codes")
    p.add_argument("--steps", type=positive_int, default=10,
                   help="images per interpolation or traversal (default: %(default)s)")
    p.add_argument("--traverse", type=int, metavar="DIM",
                   help="vary latent dimension DIM of the first image's code (a GAN: the "
                        "first seeded latent) over --range")
    p.add_argument("--range", type=floats, default=[-3.0, 3.0], metavar="LO,HI",
                   help="values of the traversed dimension (default: -3,3)")
    p.add_argument("--latent-scatter", action="store_true",
                   help="plot the codes of the dataset coloured by class (the first 2 or 3 "
                        "dimensions; principal components of longer codes)")
    p.add_argument("--series", metavar="RUN_DIR",
                   help="a training run's folder: its sample grids over the epochs in one strip")
    add_out_option(p, "generate")
    p.set_defaults(func=run)


def _dataset(name: str, count: int):
    """``count`` images (N, 1, 28, 28) in [0, 1] and labels of the validation split."""
    import torch

    from trainers.data import load_data

    data = load_data(name, (1, 28, 28), [0.0], [1.0], seed=0).val
    pairs = [data[i] for i in range(min(count, len(data)))]
    return torch.stack([x for x, _ in pairs]), torch.tensor([y for _, y in pairs])


def _grid(images, nrow: int):
    from torchvision.utils import make_grid

    images = images.detach().float().cpu().clamp(0, 1)
    return make_grid(images.repeat(1, 3 // images.shape[1], 1, 1), nrow=nrow, padding=2,
                     pad_value=1.0)


def _scatter(codes, labels, title: str):
    """The codes (N, D) as a 2-D (D = 2, or principal components) or 3-D scatter, RGB."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    flat = codes.reshape(len(codes), -1).cpu().double()
    if flat.shape[1] not in (2, 3):
        centred = flat - flat.mean(0)
        flat = centred @ _pca(centred)
    figure = Figure(figsize=(5.5, 5), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(projection="3d" if flat.shape[1] == 3 else None)
    points = axes.scatter(*flat.T.numpy(), c=labels.numpy(), cmap="tab10", s=6)
    figure.colorbar(points, ax=axes, label="class")
    axes.set_title(title, fontsize=8)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def _pca(centred):
    """The first two principal directions (D, 2) of centred rows."""
    import torch

    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return vh[:2].T.to(centred.dtype) if len(vh) >= 2 else torch.eye(centred.shape[1], 2)


def _series(run_dir: str):
    """The run's ``samples-epochNNN.png`` side by side (labelled by epoch), RGB."""
    from pathlib import Path

    import numpy as np
    from PIL import Image, ImageDraw

    from ..core.errors import VistoolError

    paths = sorted(Path(run_dir).glob("samples-epoch*.png"))
    if not paths:
        raise VistoolError(f"{run_dir!r} holds no samples-epochNNN.png; give the folder of a "
                           "'vistool train' run of a generative recipe")
    tiles = [Image.open(p).convert("RGB") for p in paths]
    height = max(t.height for t in tiles) + 16
    strip = Image.new("RGB", (sum(t.width + 4 for t in tiles), height), "white")
    x = 0
    for path, tile in zip(paths, tiles):
        strip.paste(tile, (x, 16))
        ImageDraw.Draw(strip).text((x + 2, 2), f"epoch {int(path.stem[-3:])}", fill="black")
        x += tile.width + 4
    return np.asarray(strip)


def _views(args, model, kind: str, scores: dict) -> dict:
    """Every requested picture of the model: {file stem: (RGB or grid tensor, caption,
    codes or None)}; a GAN's discriminator score on the samples goes into ``scores``."""
    import torch

    from .. import generative as gen

    views, needs_data = {}, kind != "gan"
    images, labels = _dataset(args.dataset, 512) if needs_data else (None, None)
    if kind != "autoencoder":
        codes, samples = gen.sample(model, args.samples, args.seed)
        views["samples"] = (_grid(samples, _columns(args.samples)),
                            f"{args.samples} samples, seed {args.seed}", codes)
        if kind == "gan":
            scores["discriminator_on_samples"] = round(float(
                gen.discriminator_scores(model, samples).mean()), 6)
    if needs_data:
        views["reconstructions"] = (_grid(torch.cat([images[:8], gen.reconstruct(
            model, images[:8]).cpu()]), 8), "dataset images (top), reconstructions", None)
    if args.interpolate:
        rows = [_ends(gen, model, kind, images, args.seed, r) for r in range(args.interpolate)]
        frames = torch.cat([gen.interpolate(model, a, b, args.steps).cpu() for a, b in rows])
        views["interpolation"] = (_grid(frames, args.steps), "interpolations", None)
    if args.traverse is not None:
        start = _ends(gen, model, kind, images, args.seed, 0)[0]
        values = torch.linspace(args.range[0], args.range[-1], args.steps).tolist()
        codes, frames = gen.traverse(model, start, args.traverse, values)
        views["traversal"] = (_grid(frames, args.steps), f"dimension {args.traverse} from "
                              f"{values[0]:g} to {values[-1]:g}", codes)
    if args.latent_scatter:
        codes = gen.encode(model, images).cpu()
        views["latent-scatter"] = (_scatter(codes, labels, f"codes of {len(codes)} "
                                            f"{args.dataset} images"), "latent scatter", codes)
    return views


def _columns(count: int) -> int:
    import math

    return max(1, math.ceil(math.sqrt(count)))


def _ends(gen, model, kind: str, images, seed: int, row: int):
    """The two codes of interpolation ``row``: dataset images 2·row and 2·row + 1, or two
    latents seeded from ``seed``."""
    import torch

    if kind == "gan":
        draw = torch.Generator().manual_seed(seed * 1000 + row)
        return tuple(torch.randn(1, model.z_dim, generator=draw) for _ in range(2))
    codes = gen.encode(model, images[2 * row:2 * row + 2]).cpu()
    return codes[:1], codes[1:2]


def run(args: argparse.Namespace) -> int:
    from .. import generative as gen
    from ..outputs import manifest, resolve_run_dir, run_directory, save_json, save_npy, save_png

    loaded = load(args)
    kind = gen.model_kind(loaded.model)
    extra: dict = {}
    views = _views(args, loaded.model, kind, extra)
    if args.series:
        views["series"] = (_series(args.series), f"sample grids of {args.series}", None)
    out_dir = resolve_run_dir(args.out, "generate")
    outputs = []
    with run_directory(out_dir) as staging:
        for stem, (picture, caption, codes) in views.items():
            save_png(staging / f"{stem}.png", picture)
            entry = {"png": f"{stem}.png", "caption": caption}
            if codes is not None:
                save_npy(staging / f"{stem}-codes.npy", codes)
                entry["codes"] = f"{stem}-codes.npy"
            outputs.append(entry)
        info = manifest("generate", [args.model], {k: getattr(args, k) for k in (
            "samples", "dataset", "interpolate", "steps", "traverse", "range",
            "latent_scatter", "series")}, outputs, seed=args.seed, model=loaded.describe(),
            model_kind=kind, **extra)
        save_json(staging / "manifest.json", info)
    note = f" (random weights: {loaded.weights})" if loaded.random_weights else ""
    print(f"wrote {', '.join(o['png'] for o in outputs)} to {out_dir}{note}")
    if extra:
        print(json.dumps(extra))
    return 0
