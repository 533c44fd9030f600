"""Regenerate the README's pictures (``docs/figures/``) and its evaluation table from
the outputs of ``make demo``.

    python scripts/readme_figures.py                       # runs the demo first (minutes)
    python scripts/readme_figures.py --demo vistool-out/<timestamp>-demo

The pictures are small (a few tens of kB each) and committed; the table is written between
the ``<!-- evaluation-table -->`` markers of the README. ``tests/test_readme.py`` checks that
every picture the README links exists.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

from PIL import Image

from vistool.evaluate.names import HIGHER_IS_BETTER

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- evaluation-table -->", "<!-- /evaluation-table -->"
#: The metrics the README's table shows (the demo's results.json has them all).
TABLE_METRICS = ("pointing_game", "relevance_mass", "deletion_auc", "insertion_auc",
                 "road_morf_auc")


def _one(folder: Path, pattern: str) -> Image.Image:
    found = sorted(folder.glob(pattern))
    if not found:
        raise SystemExit(f"readme_figures: no {pattern} in {folder}; is --demo a `make demo` "
                         "output folder?")
    return Image.open(found[0]).convert("RGB")


def _height(image: Image.Image, height: int) -> Image.Image:
    """Scaled to ``height``: pixels kept sharp when enlarged, smoothed when shrunk."""
    width = round(image.width * height / image.height)
    return image.resize((width, height), Image.Resampling.NEAREST if height >= image.height
                        else Image.Resampling.LANCZOS)


def _row(images: list[Image.Image], pad: int = 4) -> Image.Image:
    """Pictures of one height side by side on white."""
    width = sum(i.width for i in images) + pad * (len(images) - 1)
    row = Image.new("RGB", (width, images[0].height), "white")
    left = 0
    for image in images:
        row.paste(image, (left, 0))
        left += image.width + pad
    return row


def figures(demo: Path) -> dict[str, Image.Image]:
    """The README's pictures, by file name, from a demo output folder."""
    scene = _one(demo / "inputs", "shapes-circle-cross.png")
    return {
        # The scene, then Grad-CAM of "circle" and of "cross": each on its own object.
        "gradcam-two-objects.png": _row([_height(scene, 160),
                                         _height(_one(demo / "02-gradcam-circle",
                                                      "*_overlay.png"), 160),
                                         _height(_one(demo / "03-gradcam-cross",
                                                      "*_overlay.png"), 160)]),
        "filters.png": _height(_one(demo / "06-filters", "sheet.png"), 320),
        "deepdream.jpg": _row([_height(_one(demo / "inputs", "photo-chelsea.png"), 180),
                               _height(_one(demo / "09-deepdream", "*-chelsea.png"), 180)]),
        "vae-traversal.png": _height(_one(demo / "11-vae", "traversal.png"), 64),
        "dcgan-samples.png": _one(demo / "12-dcgan", "samples.png"),
    }


def evaluation_table(demo: Path) -> str:
    """The demo's evaluation as a Markdown table: mean [95% interval] of a few metrics."""
    results = json.loads((demo / "13-evaluate" / "results.json").read_text())
    metrics = [m for m in TABLE_METRICS if m in next(iter(results["methods"].values()))]
    lines = ["| method | " + " | ".join(f"{m} {'↑' if HIGHER_IS_BETTER[m] else '↓'}"
                                       for m in metrics) + " |",
             "|" + "---|" * (len(metrics) + 1)]
    for method, values in results["methods"].items():
        cells = [f"{values[m]['mean']:.2f} [{values[m]['ci95'][0]:.2f}, "
                 f"{values[m]['ci95'][1]:.2f}]" for m in metrics]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{results['images']} validation images of the shapes " \
                              "dataset; mean [95% bootstrap interval]."


def write(demo: Path, docs: Path, readme: Path) -> list[Path]:
    """Write the pictures into ``docs`` and the table into ``readme``; returns the pictures."""
    docs.mkdir(parents=True, exist_ok=True)
    written = []
    for name, image in figures(demo).items():
        path = docs / name
        if path.suffix == ".jpg":
            image.save(path, quality=85, optimize=True)
        else:  # a 256-colour palette: a third of the size, no visible change at this scale
            image.quantize(256, dither=Image.Dither.NONE).save(path, optimize=True)
        written.append(path)
    text = readme.read_text()
    block = re.compile(re.escape(START) + ".*?" + re.escape(END), re.S)
    if not block.search(text):
        raise SystemExit(f"readme_figures: {readme} has no {START} ... {END} block")
    readme.write_text(block.sub(lambda _m: f"{START}\n{evaluation_table(demo)}\n{END}", text))
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path,
                        help="a `make demo` output folder (default: run the demo now)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "figures",
                        help="where the pictures go (default: docs/figures)")
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md",
                        help="the README whose evaluation table is rewritten")
    args = parser.parse_args(argv)
    if args.demo is None:
        sys.path.insert(0, str(ROOT / "scripts"))
        from demo import run

        args.demo = Path(tempfile.mkdtemp(prefix="vistool-demo-")) / "demo"
        run(args.demo, seed=0)
    for path in write(args.demo, args.docs, args.readme):
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)")
    print(f"rewrote the evaluation table of {args.readme}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
