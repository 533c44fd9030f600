"""``make demo``: train (once, cached) the shapes CNN, explain it, write an HTML gallery.

No network needed. Outputs go to ``vistool-out/demo-<timestamp>/`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from trainers.data import ShapesDataset, render_scene
from trainers.recipes import pretrained_shapes_cnn
from vistool.cli import main as vistool
from vistool.outputs import default_run_name, write_gallery


def photograph() -> np.ndarray:
    """A real photograph that ships with scikit-image (the cat 'chelsea')."""
    from skimage import data

    return data.chelsea()


def run(out: Path, seed: int) -> Path:
    checkpoint = pretrained_shapes_cnn(log=lambda line: print(line, file=sys.stderr))
    inputs = out / "inputs"
    inputs.mkdir(parents=True)
    scene = render_scene(np.random.default_rng(seed), 64, [ShapesDataset.classes.index("star")])
    Image.fromarray(scene.image).resize((256, 256), Image.NEAREST).save(inputs / "shapes-star.png")
    Image.fromarray(photograph()).save(inputs / "photo-chelsea.png")
    images = [str(inputs / "shapes-star.png"), str(inputs / "photo-chelsea.png")]
    status = vistool(["activations", "--model", str(checkpoint), "--layer", "features.3",
                      "--layer", "features", "--out", str(out / "activations-shapes-cnn"),
                      *images])
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
