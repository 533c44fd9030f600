"""``vistool attribute``: pixel attributions (saliency, IG, guided backprop, occlusion ...)."""

from __future__ import annotations

import argparse

from ..explainers.names import ATTRIBUTION_METHODS
from . import explaining
from .options import positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("attribute", help="pixel attributions (saliency, IG, occlusion ...)",
                       description="Write per image an overlay PNG, a heatmap PNG and the raw "
                                   "attribution (.npy, C x H x W), and manifest.json.")
    explaining.add_explain_options(p, ATTRIBUTION_METHODS, "saliency")
    p.add_argument("--smooth", type=int, default=0, metavar="N",
                   help="SmoothGrad: average N noisy samples (default: off)")
    p.add_argument("--noise", type=float, default=0.15,
                   help="SmoothGrad noise std as a fraction of the input range "
                        "(default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="integration steps of ig (default: %(default)s)")
    p.add_argument("--window", type=positive_int, default=16,
                   help="occlusion patch size in pixels (default: %(default)s)")
    p.add_argument("--stride", type=positive_int, default=8,
                   help="occlusion patch step in pixels (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the SmoothGrad noise (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    def compute(loaded, batch, layers, target):
        from ..explainers.attribution import attribute

        result = attribute(loaded, batch, args.method, targets=target, layer=layers[0],
                           smooth=args.smooth, noise=args.noise, steps=args.steps,
                           window=args.window, stride=args.stride, seed=args.seed,
                           progress=not args.json)
        return result, {"input": result.raw}  # (N, C, H, W)

    options = {"smooth": args.smooth, "noise": args.noise, "steps": args.steps,
               "window": args.window, "stride": args.stride}
    return explaining.run(args, compute, options, seed=args.seed)
