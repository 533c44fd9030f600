"""Image sources for runs over many images: folders (recursive), glob patterns, lists of
paths (``@list.txt``) and datasets (``imagefolder:DIR``, ``shapes[:N]``, ``digits``),
streamed through a ``DataLoader`` where an unreadable image is a row with its error, not
the end of the run.
"""

from __future__ import annotations

import glob
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..core.errors import ImageError, VistoolError
from ..core.imageio import IMAGE_EXTENSIONS, load_image

__all__ = ["ImageStream", "Source", "collate", "collect", "is_collection"]

_GLOB = set("*?[")
SHAPES_COUNT = 200  # images of ``shapes`` when no count is given


@dataclass(frozen=True)
class Source:
    """One image of a run: ``key`` names it in the index (a path, or ``shapes/000012``);
    ``path`` is its file, or None for a generated image (``array``)."""

    key: str
    path: Path | None = None
    array: np.ndarray | None = None


def is_collection(items: Sequence[str]) -> bool:
    """Whether ``items`` name more than single files: a folder, a glob, a list or a dataset
    (such runs stream, index every image and skip unreadable ones)."""
    return any(_kind(item) != "file" for item in items)


def _kind(item: str) -> str:
    """``list``, ``dataset``, ``glob``, ``folder`` or ``file``; a path that exists is taken
    as the file or folder it is, whatever its name."""
    if item.startswith("@"):
        return "list"
    if not Path(item).exists():
        if item.startswith("imagefolder:") or item.split(":")[0] in ("shapes", "digits"):
            return "dataset"
        if _GLOB & set(item):
            return "glob"
    return "folder" if Path(item).is_dir() else "file"


def _images_under(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise ImageError(f"folder {str(folder)!r} does not exist; check the path")
    return sorted(p for p in folder.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _listed(item: str) -> list[Path]:
    listing = Path(item[1:])
    try:
        lines = listing.read_text().splitlines()
    except OSError as exc:
        raise ImageError(f"list {str(listing)!r} cannot be read ({exc.strerror}); give a "
                         "text file with one image path per line") from None
    return [Path(line.strip()) for line in lines if line.strip() and not line.startswith("#")]


def _dataset(item: str) -> list[Source]:
    name, _, arg = item.partition(":")
    if name == "imagefolder":
        return [Source(str(p), p) for p in _images_under(Path(arg))]
    if name == "shapes":
        from .shapes import ShapesDataset

        try:
            count = int(arg) if arg else SHAPES_COUNT
        except ValueError:
            raise VistoolError(f"shapes:{arg} needs a count, e.g. shapes:500") from None
        data = ShapesDataset(count, seed=0)
        return [Source(f"shapes/{i:06d}", array=data.images[i]) for i in range(count)]
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise VistoolError("the digits dataset needs scikit-learn: pip install scikit-learn"
                           ) from None
    images = load_digits().images
    return [Source(f"digits/{i:06d}", array=(images[i] * 255 / 16).astype(np.uint8))
            for i in range(len(images))]


def collect(items: Sequence[str]) -> list[Source]:
    """The images ``items`` name, in order: a file as given, a folder's images recursively
    and sorted, a glob's matches sorted (``**`` recursive), a list's lines, a dataset's
    images. Duplicates are kept once (the first).

    Raises:
        ImageError: a missing file, folder or list, or nothing to process at all.
    """
    found: list[Source] = []
    for item in items:
        kind = _kind(item)
        if kind == "list":
            found += [Source(str(p), p) for p in _listed(item)]
        elif kind == "dataset":
            found += _dataset(item)
        elif kind == "glob":
            found += [Source(p, Path(p)) for p in sorted(glob.glob(item, recursive=True))
                      if Path(p).is_file()]
        elif kind == "folder":
            found += [Source(str(p), p) for p in _images_under(Path(item))]
        elif Path(item).exists():
            found.append(Source(item, Path(item)))
        else:
            raise ImageError(f"image {item!r} does not exist; check the path")
    unique = list({source.key: source for source in reversed(found)}.values())[::-1]
    if not unique:
        raise ImageError(f"no images found in {' '.join(items)}")
    return unique


class ImageStream(Dataset):
    """``sources`` loaded (safely, as :func:`vistool.load_image`) and transformed; an item
    is ``(position, tensor or None, error message or "")``."""

    def __init__(self, sources: Sequence[Source], transform: Callable[[Image.Image],
                                                                         torch.Tensor]):
        self.sources, self.transform = list(sources), transform

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, position: int):
        source = self.sources[position]
        try:
            image = load_image(source.path if source.path is not None else source.array)
            return position, self.transform(image), ""
        except VistoolError as exc:
            return position, None, " ".join(str(exc).split())


def collate(items):
    """``(positions of the readable images, their batch or None, {position: error})``."""
    good = [(p, t) for p, t, error in items if not error]
    errors = {p: error for p, _, error in items if error}
    batch = torch.stack([t for _, t in good]) if good else None
    return [p for p, _ in good], batch, errors
