"""``make demo``: train (once, cached) the shapes CNN, a VAE and a DCGAN, explain them,
write an HTML gallery.

No network needed. Outputs go to ``vistool-out/demo-<timestamp>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from trainers.recipes import DEMO_DIGITS, pretrained_digits, pretrained_shapes_cnn
from vistool.cli import main as vistool
from vistool.data.shapes import ShapesDataset, render_scene
from vistool.evaluate.names import METRICS
from vistool.outputs import default_run_name, write_gallery


def photograph() -> np.ndarray:
    """A real photograph that ships with scikit-image (the cat 'chelsea')."""
    from skimage import data

    return data.chelsea()


def texture() -> np.ndarray:
    """A texture that ships with scikit-image ('brick'), as RGB."""
    from skimage import data

    return np.repeat(data.brick()[..., None], 3, axis=2)


def vgg19_weights() -> str:
    """``default`` when torchvision's ImageNet VGG19 weights are in the torch hub cache, else
    ``none`` (random weights; the outputs say so)."""
    import torch
    from torchvision.models import VGG19_Weights

    name = Path(VGG19_Weights.DEFAULT.url).name
    return "default" if (Path(torch.hub.get_dir()) / "checkpoints" / name).is_file() else "none"


def _log(line: str) -> None:
    print(line, file=sys.stderr)


def run(out: Path, seed: int) -> Path:
    checkpoint = pretrained_shapes_cnn(log=_log)
    vae, dcgan = (pretrained_digits(recipe, epochs, log=_log) for recipe, epochs in DEMO_DIGITS)
    inputs = out / "inputs"
    inputs.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    star = render_scene(rng, 64, [ShapesDataset.classes.index("star")])
    pair = render_scene(rng, 64, [ShapesDataset.classes.index("circle"),
                                  ShapesDataset.classes.index("cross")])
    for name, scene in (("shapes-star.png", star), ("shapes-circle-cross.png", pair)):
        Image.fromarray(scene.image).resize((256, 256), Image.NEAREST).save(inputs / name)
    Image.fromarray(photograph()).save(inputs / "photo-chelsea.png")
    Image.fromarray(texture()).save(inputs / "texture-brick.png")
    star_path, pair_path, photo_path, brick_path = (str(inputs / n) for n in (
        "shapes-star.png", "shapes-circle-cross.png", "photo-chelsea.png",
        "texture-brick.png"))
    model = ["--model", str(checkpoint)]
    runs = [
        ["activations", *model, "--layer", "features.3", "--layer", "features",
         "--out", str(out / "01-activations"), star_path, photo_path],
        # Two objects, two classes: each class's map should sit on its own object.
        ["gradcam", *model, "--target", "circle", "--out", str(out / "02-gradcam-circle"),
         pair_path],
        ["gradcam", *model, "--target", "cross", "--out", str(out / "03-gradcam-cross"),
         pair_path],
        ["gradcam", *model, "--topk", "2", "--out", str(out / "04-gradcam-top2"), star_path,
         photo_path],
        ["gradcam", *model, "--method", "scorecam", "--out", str(out / "05-scorecam"),
         star_path, photo_path],
        # What the last block's channels (after batch norm, before the ReLU) look for.
        ["filters", *model, "--layer", "features.12", "--channels", "0-15", "--size", "64",
         "--steps", "128", "--out", str(out / "06-filters")],
        # The image each class's logit likes best.
        ["filters", *model, *(f"--class={name}" for name in ShapesDataset.classes),
         "--size", "64", "--steps", "128", "--out", str(out / "07-class-images")],
        ["filters", *model, "--weights-rgb", "--out", str(out / "08-first-layer-kernels")],
        # DeepDream with the shapes CNN: the photograph redrawn in its learnt strokes.
        ["deepdream", *model, "--layer", "features.8", "--octaves", "3", "--steps", "10",
         "--out", str(out / "09-deepdream"), photo_path],
        # Gatys style transfer on VGG19: ImageNet weights when cached, else random ones
        # (then every output, the gallery included, says so).
        ["style", photo_path, brick_path, "--weights", vgg19_weights(), "--size", "128",
         "--steps", "60", "--out", str(out / "10-style")],
        # What the VAE and the DCGAN learnt from scikit-learn's digits.
        ["generate", "--model", str(vae), "--traverse", "0", "--interpolate", "2",
         "--latent-scatter", "--out", str(out / "11-vae")],
        ["generate", "--model", str(dcgan), "--samples", "64", "--series", str(dcgan.parent),
         "--out", str(out / "12-dcgan")],
        # How faithful and how well placed each method's maps are, against random maps,
        # and whether they survive randomising the model (they should not).
        # Every metric but ROAD's least-relevant-first order, which costs as much as all the
        # others together (its imputation) and says little that MoRF does not.
        ["evaluate", *model, "--limit", "32", "--methods",
         "gradcam,layercam,saliency,guided-backprop,random", "--metrics",
         ",".join(m for m in METRICS if m != "road_lerf_auc"), "--sanity",
         "--out", str(out / "13-evaluate")],
    ]
    for argv in runs:
        status = vistool(argv)
        if status:
            raise SystemExit(status)
    return write_gallery(out, title="vistool demo")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("vistool-out") / default_run_name("demo"),
                        help="output folder (default: vistool-out/<timestamp>-demo)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sample shapes image")
    args = parser.parse_args()
    gallery = run(args.out, args.seed)
    print(f"demo outputs: {args.out.resolve()}\ngallery: {gallery.resolve()}")
