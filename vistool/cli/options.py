"""What the commands share: option groups, argument types, model loading, image batches.

Nothing here imports torch at module level, so ``vistool --help`` and argument errors
answer at once.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

from ..core.errors import VistoolError, VistoolWarning
from ..core.progress import bar_disable
from . import cli_message


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative(kind=float):
    """An argparse type: a number of ``kind`` (int or float) that is at least 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= 0:  # NaN too
            raise argparse.ArgumentTypeError(f"must be at least 0, got {text!r}")
        return value

    return parse


def fraction(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value}")
    return value


def floats(text: str) -> list[float]:
    """An argparse type: comma-separated numbers."""
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers, got {text!r}") from None


def key_value(text: str) -> tuple[str, str]:
    """An argparse type: ``NAME=VALUE``."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name.strip(), value.strip()


def channel_list(text: str) -> list[int]:
    """``0-31`` / ``0,4,9-12`` -> list of channel indices."""
    out: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                out.extend(range(int(lo), int(hi) + 1))
            elif part.strip():
                out.append(int(part))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"channels must look like 0-31 or 0,4,9-12, got {text!r}") from None
    if not out or min(out) < 0:
        raise argparse.ArgumentTypeError(f"no valid channels in {text!r}")
    return out


# Colormaps every matplotlib has: accepted without importing it (half a second), which a run
# that writes no pictures (--no-images) never needs.
_BUILTIN_COLORMAPS = frozenset(("jet", "viridis", "plasma", "inferno", "magma", "cividis",
                                "turbo", "gray", "hot"))


def colormap(text: str) -> str:
    """An argparse type: a matplotlib colormap name."""
    if text in _BUILTIN_COLORMAPS:
        return text
    from matplotlib import colormaps

    if text not in colormaps:
        from ..core.errors import suggestion

        raise argparse.ArgumentTypeError(f"unknown colormap {text!r}"
                                         + suggestion(text, list(colormaps), "colormaps"))
    return text


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """``--model --weights --checkpoint --device --input-size --mean --std --classes``."""
    group = parser.add_argument_group("model")
    group.add_argument("--model", "-m", required=True,
                       help="torchvision name (vgg16, resnet50 ...), book model name, a trainers "
                            "checkpoint (.safetensors), path/to/file.py:factory or "
                            "package.module:factory")
    group.add_argument("--weights", default="default",
                       help="'default' (torchvision's pretrained weights from the torch hub "
                            "cache; a book model's trained checkpoint from the vistool cache "
                            "or runs/; a checkpoint's own), 'none' (random init, seeded by --seed "
                            "where the command has one, else by 0) or a "
                            "state-dict file (default: %(default)s)")
    group.add_argument("--checkpoint", metavar="FILE",
                       help="weights for a file.py:factory model (same as --weights FILE)")
    group.add_argument("--device", default="auto",
                       help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps "
                            "(default: %(default)s)")
    group.add_argument("--input-size", metavar="SIZE",
                       help="model input as H or C,H,W (default: from the model, else 3,224,224)")
    group.add_argument("--mean", type=floats, metavar="M1,M2,M3",
                       help="per-channel normalisation mean (default: from the model, else "
                            "ImageNet's)")
    group.add_argument("--std", type=floats, metavar="S1,S2,S3",
                       help="per-channel normalisation std (default: as --mean)")
    group.add_argument("--classes", metavar="FILE",
                       help="class names, one per line (default: from the weights/checkpoint)")


IMAGES_HELP = ("image files; or, streamed with one index.csv row per image, folders "
               "(recursive), glob patterns ('photos/**/*.jpg'), @list.txt (one path per line) "
               "or a dataset: imagefolder:DIR, shapes[:N], digits")


def add_many_options(parser: argparse.ArgumentParser) -> None:
    """``--workers --memory-budget --no-images --strict --overwrite`` of folder, list and
    dataset runs."""
    many = parser.add_argument_group("folder, list and dataset runs")
    many.add_argument("--workers", type=int, default=2,
                      help="DataLoader processes that read images (default: %(default)s)")
    many.add_argument("--memory-budget", type=positive_int, metavar="MIB",
                      help="pick the batch size: the largest whose activations fit in MIB "
                           "mebibytes (the sum of every layer's output, measured on the "
                           "first image; replaces --batch-size)")
    many.add_argument("--no-images", action="store_true",
                      help="only index.csv: no image or array files per image")
    many.add_argument("--strict", action="store_true",
                      help="fail (status 2) when any image cannot be read; by default it "
                           "is a row with its error and the run goes on")
    many.add_argument("--overwrite", action="store_true",
                      help="start afresh in an --out that holds an earlier run (by default "
                           "the images its index holds are skipped: a killed run resumes)")


def add_out_option(parser: argparse.ArgumentParser, kind: str) -> None:
    """``--out``: a new or empty directory for the run."""
    parser.add_argument("--out", "-o", help="output directory, must be new or empty "
                                            f"(default: vistool-out/<timestamp>-{kind})")


def check_out(out: str | None) -> None:
    """Refuse an ``--out`` that is a file or a non-empty directory before any slow work."""
    if out is None:
        return
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise VistoolError(f"--out {out!r} is a file; give a new or empty directory")
    if path.is_dir() and any(path.iterdir()):
        raise VistoolError(f"output directory {out!r} already exists and is not empty; "
                           "choose another --out or remove it")


def status(message: str) -> None:
    """A progress line on stderr, for people watching a terminal (as tqdm's bars): kept out
    of logs and pipes, where stderr carries only warnings and the one-line error."""
    if sys.stderr.isatty():
        print(f"vistool: {message}", file=sys.stderr, flush=True)


def load(args: argparse.Namespace):
    """Load the model the options describe, saying so first; warnings become one line each."""
    from ..core.zoo import load_model

    status(f"loading model {args.model} …")
    weights = args.checkpoint if args.checkpoint else args.weights
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", VistoolWarning)
        loaded = load_model(args.model, weights=weights, device=args.device,
                            input_size=args.input_size, mean=args.mean, std=args.std,
                            classes=args.classes, seed=getattr(args, "seed", 0))
    if loaded.random_weights and not caught:
        status(f"note: {loaded.weights}: the pictures show an untrained model")
    for warning in caught:
        if issubclass(warning.category, VistoolWarning):
            print(f"vistool: warning: {cli_message(warning.message)}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    return _discriminator(loaded, args) if getattr(args, "part", None) else loaded


def _discriminator(loaded, args: argparse.Namespace):
    """A GAN's discriminator as a real/fake classifier on the generator's image size (see
    :class:`vistool.generative.RealFake`), keeping what the checkpoint says of its weights."""
    import dataclasses

    import torch

    from .. import generative as gen
    from ..core.zoo import load_model

    if gen.model_kind(loaded.model) != "gan":
        raise VistoolError(f"--part discriminator needs a GAN; {args.model} is a "
                           f"{gen.model_kind(loaded.model)}")
    shape = tuple(gen.decode(loaded.model, torch.zeros(1, loaded.model.z_dim)).shape[1:])
    part = load_model(gen.RealFake(loaded.model.discriminator), device=loaded.device,
                      input_size=args.input_size or shape, mean=[0.0] * shape[0],
                      std=[1.0] * shape[0], classes=list(gen.RealFake.classes))
    return dataclasses.replace(part, spec=f"{loaded.spec} (discriminator)",
                               weights=loaded.weights, random_weights=loaded.random_weights,
                               metadata=loaded.metadata)


def slug(name: str) -> str:
    """A file-name-safe version of ``name``."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "root"


def predictions(loaded, logits, k: int = 5) -> list[list[dict]]:
    """Top-k predictions per image as [{"index", "name", "prob"}]."""
    probs = logits.float().softmax(1)
    top = probs.topk(min(k, probs.shape[1]), dim=1)
    return [[{"index": int(i), "name": loaded.class_name(int(i)), "prob": round(float(p), 6)}
             for p, i in zip(values, indices)]
            for values, indices in zip(top.values.cpu(), top.indices.cpu())]


def prepare_images(args: argparse.Namespace):
    """Shared start of the image commands: inputs, model, layers (checked) and every image
    preprocessed before anything is written, so a bad file fails the run up front.
    Returns ``(paths, loaded, layers, batches)`` with ``batches`` yielding
    ``(first_index, batch_on_device)``."""
    from ..core.imageio import expand_inputs, load_image
    from ..core.layers import resolve_layers

    check_out(args.out)
    paths = expand_inputs(args.images)
    loaded = load(args)
    layers = args.layer or [loaded.default_layer]
    resolve_layers(loaded.model, layers)
    tensors = [loaded.transform(load_image(p)) for p in paths]
    return paths, loaded, layers, _batches(args, loaded, tensors)


def _batches(args: argparse.Namespace, loaded, tensors) -> Iterator:
    import torch
    from tqdm import tqdm

    for first in tqdm(range(0, len(tensors), args.batch_size), desc=args.command,
                      file=sys.stderr, disable=bar_disable(len(tensors) > args.batch_size)):
        yield first, torch.stack(tensors[first:first + args.batch_size]).to(loaded.device)
