"""Datasets for the trainers: torchvision MNIST / FashionMNIST / CIFAR-10, image folders,
scikit-learn's digits and the project's synthetic ``shapes``.

Every dataset yields ``(image, label)`` with images as float tensors (C, H, W) in [0, 1];
:func:`load_data` adds the recipe's augmentation and normalisation and returns a
:class:`DataSpec`.

``images``: every image under ``--data-dir`` (searched recursively), unlabelled (label 0),
for the ``fast-style`` recipe.

``shapes``: deterministic by seed, several shape classes of random size, colour and
position on a textured background. The ground-truth box and mask of every object are
kept so localisation can be measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Subset, TensorDataset

from vistool.core.errors import DataError
from vistool.data.shapes import SHAPE_CLASSES, ShapesDataset

__all__ = ["DATASETS", "DataSpec", "load_data"]

DATASETS = ("mnist", "fashion-mnist", "cifar10", "digits", "shapes", "imagefolder", "images")


@dataclass
class DataSpec:
    """Train and validation sets with what a checkpoint needs to know about them."""

    train: Dataset
    val: Dataset
    classes: list[str]
    input_size: tuple[int, int, int]
    name: str


class Mapped(Dataset):
    """``base`` with ``transform`` applied to each image."""

    def __init__(self, base: Dataset, transform: Callable | None):
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int):
        image, label = self.base[index]
        return (self.transform(image) if self.transform else image), label


def _digits(seed: int, val_fraction: float, size: int) -> tuple[Dataset, Dataset]:
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DataError("the digits dataset needs scikit-learn: pip install scikit-learn "
                        "(or pip install -e '.[dev]')") from None
    digits = load_digits()
    images = torch.from_numpy(digits.images).float().div(16.0)[:, None]  # (N, 1, 8, 8)
    images = torch.nn.functional.interpolate(images, size=(size, size), mode="bilinear",
                                             align_corners=False).clamp(0, 1)
    labels = torch.from_numpy(digits.target).long()
    return _split(TensorDataset(images, labels), seed, val_fraction)


def _split(dataset: Dataset, seed: int, val_fraction: float) -> tuple[Dataset, Dataset]:
    n = len(dataset)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(n * val_fraction))
    return Subset(dataset, order[n_val:]), Subset(dataset, order[:n_val])


# The torchvision datasets: class, where their files go under --data-dir, which files.
_TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", "the four unpacked idx files (train-images-idx3-ubyte, "
                                    "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
                                    "t10k-labels-idx1-ubyte)"),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", "the four unpacked idx files "
                                                          "(train-images-idx3-ubyte, ...)"),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", "the unpacked cifar-10-python.tar.gz "
                                                  "(data_batch_1 ... test_batch, batches.meta)"),
}


def _torchvision(name: str, data_dir: Path, download: bool) -> tuple[Dataset, Dataset, list]:
    import torchvision
    from torchvision.transforms import v2

    class_name, folder, files = _TORCHVISION[name]
    cls = getattr(torchvision.datasets, class_name)
    to_tensor = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    undo = _undone_on_failure(data_dir, folder) if download else contextlib.nullcontext()
    try:
        with undo:
            train = cls(str(data_dir), train=True, download=download, transform=to_tensor)
            val = cls(str(data_dir), train=False, download=download, transform=to_tensor)
    except (RuntimeError, OSError) as exc:  # OSError: urllib's URLError included
        if download:
            raise DataError(f"{name} download failed ({_reason(exc)}); put {files} into "
                            f"{str(data_dir / folder)!r} by hand and run without --download"
                            ) from None
        if isinstance(exc, RuntimeError):
            raise DataError(f"{name} not found under {str(data_dir)!r} ({exc}); pass "
                            "--download, or --data-dir pointing at a folder that holds it"
                            ) from None
        raise DataError(f"{name} could not be read under {str(data_dir)!r} ({exc})") from None
    return train, val, list(train.classes)


def _reason(exc: BaseException) -> str:
    """The gist of a failed download, on one line: "[Errno -2] Name or service not known"."""
    text = str(getattr(exc, "reason", exc))  # URLError keeps the cause in .reason
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    last = lines[-1] if lines else type(exc).__name__
    return re.sub(r"^<urlopen error (.*)>$", r"\1", last)


@contextlib.contextmanager
def _undone_on_failure(root: Path, folder: str) -> Iterator[None]:
    """If the body raises, remove what it created in ``root`` and in each level of
    ``root/folder`` (and ``root`` with its parents, where they were created); what existed
    before is never touched."""
    levels = [root]
    for part in Path(folder).parts:
        levels.append(levels[-1] / part)
    missing = [p for p in (root, *root.parents) if not p.exists()]
    before = {level: set(os.listdir(level)) if level.is_dir() else None for level in levels}
    try:
        yield
    except BaseException:
        if missing:  # everything under the highest folder that did not exist is new
            shutil.rmtree(missing[-1], ignore_errors=True)
        for level, names in before.items():
            if not level.is_dir():
                continue
            if names is None:
                shutil.rmtree(level, ignore_errors=True)
                continue
            for new in set(os.listdir(level)) - names:
                path = level / new
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        raise


def _image_folder(root: Path, seed: int, val_fraction: float) -> tuple[Dataset, Dataset, list]:
    import torchvision
    from torchvision.transforms import v2

    from vistool.core.imageio import load_image

    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist; pass --data-dir with "
                        "one subfolder per class (or train/ and val/ holding those)")
    to_tensor = v2.Compose([v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True)])

    def folder(path: Path):
        try:
            data = torchvision.datasets.ImageFolder(str(path), loader=load_image,
                                                    transform=to_tensor)
        except FileNotFoundError as exc:
            raise DataError(f"image folder {str(path)!r} holds no images ({exc}); put images "
                            "in one subfolder per class") from None
        if len(data.classes) < 2:
            raise DataError(f"image folder {str(path)!r} has {len(data.classes)} class "
                            f"({', '.join(data.classes)}); a classifier needs at least two "
                            "subfolders")
        return data

    if (root / "train").is_dir() and (root / "val").is_dir():
        train, val = folder(root / "train"), folder(root / "val")
        if train.classes != val.classes:
            raise DataError(f"train/ and val/ of {str(root)!r} have different classes: "
                            f"{train.classes} vs {val.classes}")
        return train, val, train.classes
    data = folder(root)
    return (*_split(data, seed, val_fraction), data.classes)


class _Images(Dataset):
    """The images under a folder, searched recursively and sorted, each with label 0."""

    def __init__(self, root: Path):
        from vistool.core.imageio import IMAGE_EXTENSIONS

        if not root.is_dir():
            raise DataError(f"image folder {str(root)!r} does not exist; pass --data-dir "
                            "with the training images (any layout, searched recursively)")
        self.paths = sorted(p for p in root.rglob("*")
                            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if len(self.paths) < 2:
            raise DataError(f"image folder {str(root)!r} holds {len(self.paths)} image(s); "
                            "give at least two (one is kept for validation)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        import numpy as np

        from vistool.core.imageio import load_image

        array = np.asarray(load_image(self.paths[index]), dtype=np.float32) / 255
        return torch.from_numpy(array).permute(2, 0, 1).contiguous(), 0


def load_data(name: str, input_size: Sequence[int], mean: Sequence[float],
              std: Sequence[float], augment: Sequence[str] = (), data_dir: str | None = None,
              download: bool = False, seed: int = 0, val_fraction: float = 0.2,
              shapes_count: int = 5000) -> DataSpec:
    """Build the train/validation sets of dataset ``name`` for a model input ``input_size``.

    Images are resized to the input size and converted to its channel count; ``augment``
    may hold ``"crop"`` (random crop with 4-pixel padding, or a random resized crop for
    inputs over 64 pixels), ``"flip"`` (horizontal) for the training set. Normalisation
    with ``mean``/``std`` comes last.

    Raises:
        DataError: unknown dataset, missing files, empty or single-class image folder.
    """
    from torchvision.transforms import v2

    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    channels, height, width = input_size
    root = Path(data_dir or os.environ.get("VISTOOL_DATA", "data")).expanduser()
    if name in ("mnist", "fashion-mnist", "cifar10"):
        train, val, classes = _torchvision(name, root, download)
    elif name == "digits":
        train, val = _digits(seed, val_fraction, height)
        classes = [str(i) for i in range(10)]
    elif name == "shapes":
        n_val = max(1, shapes_count // 10)
        train = ShapesDataset(shapes_count, size=height, seed=seed)
        val = ShapesDataset(n_val, size=height, seed=seed + 10_000)
        classes = list(SHAPE_CLASSES)
    elif data_dir is None:
        raise DataError(f"the {name} dataset needs --data-dir (" + (
            "one subfolder per class, or train/ and val/ holding those)" if name == "imagefolder"
            else "a folder of images, searched recursively)"))
    elif name == "images":
        train, val = _split(_Images(root), seed, val_fraction)
        classes = []
    else:
        train, val, classes = _image_folder(root, seed, val_fraction)

    common: list = []
    if channels == 1:
        common.append(v2.Grayscale(1))
    elif channels == 3:
        common.append(v2.Lambda(lambda x: x.expand(3, -1, -1) if x.shape[0] == 1 else x))
    resize = [v2.Resize((height, width), antialias=True)]
    normalize = [v2.Normalize(list(mean), list(std))]
    train_steps = [*common]
    if "crop" in augment and height > 64:
        train_steps.append(v2.RandomResizedCrop((height, width), antialias=True))
    else:
        train_steps += resize
        if "crop" in augment:
            train_steps.append(v2.RandomCrop((height, width), padding=4))
    if "flip" in augment:
        train_steps.append(v2.RandomHorizontalFlip())
    train_tf = v2.Compose([*train_steps, *normalize])
    val_tf = v2.Compose([*common, *resize, *normalize])
    return DataSpec(Mapped(train, train_tf), Mapped(val, val_tf), classes,
                    (channels, height, width), name)
