"""``vistool gradcam``: class activation maps (the Grad-CAM family)."""

from __future__ import annotations

import argparse

from ..explainers.names import CAM_METHODS, FUSIONS, LAYOUTS
from . import explaining
from .options import key_value, positive_int


def add_parser(sub) -> None:
    p = sub.add_parser("gradcam", help="class activation maps (Grad-CAM family)",
                       description="Write per image an overlay PNG, a heatmap PNG and the raw "
                                   "layer-resolution map (.npy), and manifest.json with the "
                                   "top-5 predictions.")
    explaining.add_explain_options(p, CAM_METHODS, "gradcam")
    p.add_argument("--topk", type=positive_int, metavar="K",
                   help="explain the K best classes of each image (instead of --target)")
    p.add_argument("--region", metavar="X0,Y0,X1,Y1|MASK",
                   help="segmentation models: explain --target's score summed over this box "
                        "(in the model input's pixels, x1 and y1 excluded) or over the nonzero "
                        "pixels of a mask image (brought to the input as the images are) "
                        "(default: over the pixels the model assigns to the class)")
    p.add_argument("--similar-to", metavar="REF",
                   help="explain why each image is similar to this image, or to the mean of "
                        "this folder's concept images: the cosine similarity of their "
                        "embeddings (instead of a class)")
    p.add_argument("--embedding", metavar="LAYER",
                   help="--similar-to: the layer whose output (averaged over positions) is "
                        "the embedding (default: the input of the model's last linear layer)")
    p.add_argument("--channels", type=positive_int, metavar="K",
                   help="scorecam, sscam, iscam: use only the K highest-variance channels of each "
                   "image (Faster Score-CAM)")
    p.add_argument("--part", choices=("discriminator",),
                   help="explain a GAN checkpoint's discriminator as a classifier of the "
                        "classes real and fake (--target fake: what looks generated)")
    p.add_argument("--fuse", choices=FUSIONS,
                   help="how the maps of several --layer combine: mean (pytorch-grad-cam's) or "
                        "product (RefineCAM's) of the normalised maps, or sum of the raw maps "
                        "(LeGrad's) (default: the method's own: refinecam product, legrad sum, "
                        "else mean)")
    p.add_argument("--aug-smooth", action="store_true",
                   help="average the maps of six test-time augmentations (horizontal flip x "
                        "0.9, 1, 1.1 times the input), each flipped back (6x the time)")
    p.add_argument("--eigen-smooth", action="store_true",
                   help="the first principal component of the weighted activations instead "
                        "of their channel sum (less noise; for the methods whose map is such "
                        "a sum)")
    p.add_argument("--option", type=key_value, action="append", default=[],
                   metavar="NAME=VALUE",
                   help="one of the method's own options, e.g. --option k=3 for fem; "
                        "'vistool methods' lists every method's options")
    p.add_argument("--layout", choices=LAYOUTS, default="auto",
                   help="how the layer's output holds its grid: nchw, nhwc (channels-last, "
                        "Swin) or tokens ((N, [class token +] H*W, D), ViT); auto detects it "
                        "from the shapes (default: %(default)s)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..data.sources import is_collection

    many = is_collection(args.images)
    fast = {}  # a run over many images explains a fast copy of the model, built once

    def compute(loaded, batch, layers, target):
        from ..explainers.cam import explain, fast_copy

        if many and not fast:
            fast["net"] = fast_copy(loaded, args.method, layers, batch)
        result = explain(fast.get("net", loaded), batch, args.method, targets=target,
                         layer=layers if len(layers) > 1 else layers[0],
                         topk=args.topk, channels=args.channels, progress=not args.json,
                         layout=args.layout, fuse=args.fuse, aug_smooth=args.aug_smooth,
                         eigen_smooth=args.eigen_smooth, options=dict(args.option))
        return result, result.raw  # per layer (N, [k,] h, w)

    return explaining.run(args, compute, {"topk": args.topk, "channels": args.channels,
                                          "layout": args.layout, "fuse": args.fuse,
                                          "aug_smooth": args.aug_smooth,
                                          "eigen_smooth": args.eigen_smooth,
                                          "options": dict(args.option)})
