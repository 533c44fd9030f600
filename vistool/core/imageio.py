"""Loading, validating, preprocessing and deprocessing images.

``load_image`` accepts a path, bytes, a PIL image or an array and returns an 8-bit RGB
PIL image: grayscale, palette, RGBA (composited on white), 16-bit and CMYK inputs are
converted and EXIF orientation applied. Anything unusable raises :class:`ImageError`.

For batches of images as tensors: :func:`normalisation` (a model's mean and std as
tensors), :func:`resize` and :func:`gaussian_blur`.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageError

__all__ = [
    "IMAGE_EXTENSIONS",
    "MAX_PIXELS",
    "deprocess",
    "expand_inputs",
    "gaussian_blur",
    "load_image",
    "load_tensor",
    "make_transform",
    "normalisation",
    "preprocess",
    "resize",
]

#: Images with more pixels than this are refused as possible decompression bombs.
MAX_PIXELS = 89_478_485  # PIL's own default warning threshold

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)

ImageSource = str | os.PathLike | bytes | Image.Image | np.ndarray


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[Path]:
    """Paths of the images to process: files as given, directories expanded to their images.

    A directory contributes its files with an image extension, sorted by name (not
    recursive). A missing path or a directory without images raises :class:`ImageError`.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                raise ImageError(
                    f"directory {str(path)!r} holds no images "
                    f"(looked for {', '.join(sorted(IMAGE_EXTENSIONS))})"
                )
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise ImageError(f"image {str(path)!r} does not exist; check the path")
    if not paths:
        raise ImageError("no images given; pass image files or directories")
    return paths


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode == "F":
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        else:
            scale = 65535.0 if arr.max() > 255 or img.mode.startswith("I;16") else 255.0
            arr = arr / scale * 255.0
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB") if img.mode != "RGB" else img


def _describe(source: ImageSource) -> str:
    if isinstance(source, (str, os.PathLike)):
        return repr(str(source))
    return f"<{type(source).__name__}>"


def load_image(source: ImageSource, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Load ``source`` as an 8-bit RGB PIL image.

    Args:
        source: a file path, the encoded bytes of an image file, a PIL image, or an
            array of shape (H, W), (H, W, 3) or (H, W, 4) (uint8, or float in [0, 1]).
        max_pixels: refuse images larger than this (decompression bombs).

    Raises:
        ImageError: missing file, not an image, truncated data, zero size, too large,
            or an unsupported format.
    """
    name = _describe(source)
    if isinstance(source, np.ndarray):
        img = _from_array(source, name)
    elif isinstance(source, Image.Image):
        img = source
    else:
        img = _open(source, name, max_pixels)
    if img.width == 0 or img.height == 0:
        raise ImageError(f"image {name} has zero size ({img.width}x{img.height})")
    if img.width * img.height > max_pixels:
        raise ImageError(
            f"image {name} has {img.width * img.height} pixels, more than the limit of {max_pixels}"
            " (a possible decompression bomb); resize it first"
        )
    with contextlib.suppress(Exception):  # malformed EXIF should not make an image unreadable
        img = ImageOps.exif_transpose(img) or img
    return _to_rgb(img)


def load_tensor(source: ImageSource, longer: int | None = None) -> torch.Tensor:
    """``source`` loaded as :func:`load_image` does, as a (1, 3, H, W) float tensor in
    [0, 1]; resized (Lanczos) so that its longer side is ``longer`` pixels, when given."""
    image = load_image(source)
    if longer is not None:
        factor = longer / max(image.size)
        image = image.resize((max(1, round(image.width * factor)),
                              max(1, round(image.height * factor))), Image.LANCZOS)
    array = np.asarray(image, dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1)[None].contiguous()


def _open(source, name: str, max_pixels: int) -> Image.Image:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            raise ImageError(f"{name} is a directory, not an image")
        if not path.exists():
            raise ImageError(f"image {name} does not exist; check the path")
        if path.stat().st_size == 0:
            raise ImageError(f"image {name} is an empty file (zero bytes)")
        fp = path
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("image data is empty (zero bytes)")
        fp = io.BytesIO(source)
    else:
        raise ImageError(f"cannot read an image from {name}; pass a path, bytes or an array")
    old_limit, old_truncated = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        Image.MAX_IMAGE_PIXELS = max_pixels
        ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not grey
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp)
            img.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"image {name} is too large ({exc}); it may be a decompression bomb, resize it first"
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{name} is not an image in a supported format (PNG, JPEG, BMP, GIF, TIFF, WebP, PPM)"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"image {name} is corrupt or truncated ({exc}); re-export it") from None
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = old_limit, old_truncated
    return img


def _from_array(arr: np.ndarray, name: str) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"array {name} has shape {arr.shape}; expected (H, W), (H, W, 3/4)")
    if arr.size == 0:
        raise ImageError(f"image {name} has zero size {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(arr, 0.0, 1.0) * 255.0 + 0.5
        elif arr.dtype == np.uint16:
            arr = arr / 257.0 + 0.5
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    mode = {2: "L", 3: "RGB", 4: "RGBA"}[arr.shape[2] if arr.ndim == 3 else 2]
    return Image.fromarray(np.ascontiguousarray(arr), mode)


def make_transform(
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    resize: int | None = None,
):
    """The preprocessing of a model: PIL RGB image -> normalised float tensor (C, H, W).

    Resizes the shorter side to ``resize`` and centre-crops to ``input_size[1:]``
    (torchvision's ImageNet recipe); without ``resize`` the image is resized straight
    to the input size. A one-channel model gets the grayscale image; a model whose input
    is not an image (a GAN's latent) gets a transform that raises :class:`ImageError`.
    """
    from torchvision.transforms import v2

    channels, height, width = input_size
    if channels not in (1, 3):
        def refuse(_image):
            raise ImageError(f"this model takes inputs of shape {tuple(input_size)}, not "
                             "images (1 or 3 channels); image commands do not apply to it")

        return refuse
    steps = []
    if channels == 1:
        steps.append(v2.Grayscale(num_output_channels=1))
    if resize is not None:
        steps += [v2.Resize(resize, antialias=True), v2.CenterCrop((height, width))]
    else:
        steps.append(v2.Resize((height, width), antialias=True))
    steps += [
        v2.PILToTensor(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ]
    return v2.Compose(steps)


def preprocess(images: Sequence[ImageSource] | ImageSource, transform,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Load each image and apply ``transform``; returns a batch (N, C, H, W) on ``device``."""
    if not isinstance(images, (list, tuple)):
        images = [images]
    batch = torch.stack([transform(load_image(img)) for img in images])
    return batch.to(device) if device is not None else batch


def deprocess(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo normalisation: (N, C, H, W) or (C, H, W) -> displayable RGB floats in [0, 1].

    One-channel input is repeated to three channels. Stays on the input's device.
    """
    mean_t = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    std_t = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).view(-1, 1, 1)
    out = (batch.detach() * std_t + mean_t).clamp(0, 1)
    if out.shape[-3] == 1:
        out = out.repeat_interleave(3, dim=-3)
    return out


def normalisation(mean: Sequence[float], std: Sequence[float],
                  device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A model's ``mean`` and ``std`` as two float tensors (1, C, 1, 1) on ``device``: images
    (N, C, H, W) in [0, 1] become the model's input as ``(images - mean) / std``."""
    return (torch.tensor(mean, device=device).view(1, -1, 1, 1),
            torch.tensor(std, device=device).view(1, -1, 1, 1))


def resize(images: torch.Tensor, size: tuple[int, int], antialias: bool | None = None,
           clamp: bool = False) -> torch.Tensor:
    """``images`` (N, C, H, W) resized bilinearly (``align_corners=False``) to ``size``
    (H, W); returned as they are when they already have that size.

    ``antialias``: True or False; None (the default) antialiases only when an axis shrinks.
    ``clamp``: clamp the resized images to [0, 1] (antialiasing may overshoot by a rounding
    error).
    """
    if tuple(images.shape[-2:]) == size:
        return images
    if antialias is None:
        antialias = size[0] < images.shape[-2] or size[1] < images.shape[-1]
    out = F.interpolate(images, size=size, mode="bilinear", align_corners=False,
                        antialias=antialias)
    return out.clamp(0, 1) if clamp else out


def gaussian_blur(images: torch.Tensor, sigma: float, radius: int | None = None
                  ) -> torch.Tensor:
    """``images`` (N, C, H, W) blurred with a Gaussian of ``sigma`` pixels: separable, each
    channel alone, edges replicated, the kernel ``2 * radius + 1`` taps wide (default radius
    ``max(1, ceil(3 * sigma))``)."""
    if radius is None:
        radius = max(1, math.ceil(3 * sigma))
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-taps**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    out = F.pad(images, [radius] * 4, mode="replicate")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
