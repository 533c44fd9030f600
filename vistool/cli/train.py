"""``vistool train``: train a textbook recipe (a face over ``trainers``)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..core.errors import VistoolError
from .options import non_negative, positive_int


def add_parser(sub) -> None:
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
    p.add_argument("--data-dir", "--data", help="where datasets live (default: $VISTOOL_DATA "
                                                "or ./data); fast-style: the training images")
    p.add_argument("--download", action="store_true",
                   help="download torchvision datasets that are missing")
    p.add_argument("--epochs", type=positive_int, help="epochs (default: the recipe's)")
    p.add_argument("--batch-size", type=positive_int,
                   help="global batch size, split over DDP processes (default: the recipe's)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the whole run "
                                                       "(default: %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, mps (default: auto)")
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: bf16 autocast (fp16 + grad scaling on older GPUs)")
    p.add_argument("--limit-batches", type=positive_int, metavar="N",
                   help="train on at most N batches per epoch (a quick check of a setup; "
                        "validation still sees the whole validation set)")
    p.add_argument("--workers", type=int, default=0,
                   help="DataLoader worker processes (default: %(default)s)")
    p.add_argument("--out", "-o", help="run directory (default: runs/<recipe>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last completed epoch")
    p.add_argument("--no-pretrained", action="store_true",
                   help="transfer recipes: start from random weights instead of the "
                        "torchvision weights; fast-style: a random-weight VGG16 loss network")
    p.add_argument("--style", action="append", metavar="IMG", default=[],
                   help="fast-style: the style image (repeat to blend several)")
    p.add_argument("--style-weight", type=non_negative(float), default=1e5, metavar="W",
                   help="fast-style: weight of the style loss against the content loss's 1 "
                        "(default: %(default)g)")
    p.add_argument("--image-size", type=positive_int, metavar="N",
                   help="fast-style: training images are resized to N x N (default: 256)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
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
                      pretrained=False if args.no_pretrained else None, style=args.style,
                      style_weight=args.style_weight, image_size=args.image_size,
                      epochs=args.epochs,
                      batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                      device=args.device, amp=args.amp, workers=args.workers,
                      limit_batches=args.limit_batches, progress=not args.quiet)
    if int(os.environ.get("RANK", "0")) == 0:
        shown = " ".join(f"{k}={best[k]:.4f}" for k in ("val_loss", "val_acc") if k in best)
        print(f"best epoch {best.get('epoch')}: {shown}; checkpoints in {out}")
    return 0
