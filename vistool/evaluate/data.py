"""Labelled images to evaluate explanations on: the synthetic shapes (labels, boxes and masks
known) or an image folder (labels from class-named subfolders, masks from a folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..core.errors import DataError
from ..core.imageio import IMAGE_EXTENSIONS, load_image
from ..core.zoo import LoadedModel
from ..data.shapes import ShapesDataset

__all__ = ["EvalSet", "load_eval_set"]


@dataclass
class EvalSet:
    """Preprocessed images (N, C, H, W) on the model's device with their names, the class to
    explain per image (``labels``; None: explain the prediction), and object masks
    (N, H, W) bool and boxes (N, 4) where known."""

    images: torch.Tensor
    names: list[str]
    labels: torch.Tensor | None
    masks: torch.Tensor | None
    boxes: torch.Tensor | None


def _shapes(loaded: LoadedModel, limit: int, seed: int) -> EvalSet:
    _, height, width = loaded.input_size
    if height != width:
        raise DataError(f"the shapes data is square; this model takes {height}×{width} inputs")
    data = ShapesDataset(limit, size=height, seed=10_000 + seed)  # the recipe's validation seed
    images = torch.stack([loaded.transform(load_image(image)) for image in data.images])
    return EvalSet(images=images.to(loaded.device),
                   names=[f"shapes/{i:06d}" for i in range(limit)],
                   labels=torch.from_numpy(data.labels), masks=torch.from_numpy(data.masks),
                   boxes=torch.from_numpy(data.boxes))


def _mask_file(masks_dir: Path, root: Path, image: Path) -> Path:
    relative = image.relative_to(root).with_suffix("")
    for stem in (relative, Path(relative.name)):
        for ext in sorted(IMAGE_EXTENSIONS):
            candidate = masks_dir / stem.with_suffix(ext)
            if candidate.is_file():
                return candidate
    raise DataError(f"no mask for {image} in {masks_dir} (looked for {relative}.png and "
                    f"{relative.name}.png, any image extension); give every image a mask")


def _mask(loaded: LoadedModel, path: Path) -> torch.Tensor:
    """A mask file (non-zero = object) through the model's own resize and crop."""
    binary = np.asarray(Image.open(path).convert("L")) > 0
    rgb = Image.fromarray(np.repeat(binary[..., None], 3, 2).astype(np.uint8) * 255)
    channel = loaded.transform(rgb)[0]
    middle = (0.5 - loaded.mean[0]) / loaded.std[0]
    return channel > middle


def _folder(loaded: LoadedModel, root: Path, masks_dir: Path | None, limit: int) -> EvalSet:
    if not root.is_dir():
        raise DataError(f"imagefolder:{root}: no such folder")
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)[:limit]
    if not paths:
        raise DataError(f"imagefolder:{root} holds no images")
    images = torch.stack([loaded.transform(load_image(p)) for p in paths])
    classes = loaded.classes or []
    folders = [p.parent.name for p in paths]
    labels = (torch.tensor([classes.index(f) for f in folders])
              if classes and all(f in classes for f in folders) else None)
    masks = None
    if masks_dir is not None:
        if not masks_dir.is_dir():
            raise DataError(f"`masks`: no such folder {masks_dir}")
        masks = torch.stack([_mask(loaded, _mask_file(masks_dir, root, p)) for p in paths])
    return EvalSet(images=images.to(loaded.device), names=[str(p) for p in paths],
                   labels=labels, masks=masks, boxes=None)


def load_eval_set(loaded: LoadedModel, dataset: str = "shapes", masks: str | None = None,
                  limit: int = 64, seed: int = 0) -> EvalSet:
    """The images to evaluate on.

    Args:
        loaded: the model (its preprocessing and device).
        dataset: ``shapes`` (``limit`` scenes of the shapes recipe's validation seed plus
            ``seed``, at the model's input size, with labels, boxes and masks) or
            ``imagefolder:DIR`` (the first ``limit`` images under DIR in name order; labelled
            when every image's folder is named after one of the model's classes).
        masks: for an image folder, a folder of masks (non-zero pixels = object) named as
            the images (``DIR/a/b.jpg`` -> ``MASKS/a/b.png`` or ``MASKS/b.png``).
    """
    if dataset == "shapes":
        if masks is not None:
            raise DataError("`masks` is for imagefolder:DIR; the shapes data has its own")
        return _shapes(loaded, limit, seed)
    if dataset.startswith("imagefolder:"):
        return _folder(loaded, Path(dataset.split(":", 1)[1]).expanduser(),
                       Path(masks).expanduser() if masks else None, limit)
    raise DataError(f"unknown dataset {dataset!r}; use shapes or imagefolder:DIR")
