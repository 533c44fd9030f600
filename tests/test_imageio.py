"""Image loading: every input kind converts to 8-bit RGB, every bad input gives its error."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from vistool import ImageError, deprocess, expand_inputs, load_image
from vistool.core.imageio import make_transform, preprocess


def test_rgb_path_bytes_pil_and_array_agree(rgb_file):
    from_path = np.asarray(load_image(rgb_file))
    assert from_path.shape == (30, 40, 3) and from_path.dtype == np.uint8
    assert np.array_equal(np.asarray(load_image(rgb_file.read_bytes())), from_path)
    assert np.array_equal(np.asarray(load_image(Image.open(rgb_file))), from_path)
    assert np.array_equal(np.asarray(load_image(from_path)), from_path)
    assert np.array_equal(np.asarray(load_image(from_path / 255.0)), from_path)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = tmp_path / "grey.png"
    Image.fromarray(np.full((5, 7), 77, np.uint8), "L").save(path)
    arr = np.asarray(load_image(path))
    assert arr.shape == (5, 7, 3) and (arr == 77).all()


def test_rgba_and_transparent_palette_composite_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half fully transparent
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(path)
    arr = np.asarray(load_image(path))
    assert (arr[:2] == [200, 0, 0]).all() and (arr[2:] == 255).all()

    pal = Image.new("P", (3, 3), 0)
    pal.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 1
    path = tmp_path / "pal.png"
    pal.save(path, transparency=1)
    arr = np.asarray(load_image(path))
    assert (arr[1, 1] == 255).all() and (arr[0, 0] == [10, 20, 30]).all()


def test_sixteen_bit_scales_to_eight(tmp_path):
    arr16 = np.array([[0, 65535], [32896, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr16).save(path)
    out = np.asarray(load_image(path))[..., 0]
    assert out.tolist() == [[0, 255], [128, 255]]


def test_cmyk_jpeg_converts(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red
    arr = np.asarray(load_image(path)).astype(int)
    assert arr.shape == (8, 8, 3)
    assert (arr[..., 0] > 200).all() and (arr[..., 1:] < 60).all()


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (6, 2), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_image(path).size == (2, 6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.png", "does not exist"),
        (lambda d: _write(d / "empty.png", b""), "empty file"),
        (lambda d: _write(d / "notes.png", b"this is text, not pixels\n" * 10),
         "not an image in a supported format"),
        (lambda d: _write(d / "drawing.svg", b"<svg xmlns='http://www.w3.org/2000/svg'/>"),
         "not an image in a supported format"),
        (lambda d: _truncated_png(d), "corrupt or truncated"),
        (lambda d: d, "is a directory"),
    ],
    ids=["missing", "empty", "text", "svg", "truncated", "directory"],
)
def test_bad_images_raise_clear_errors(tmp_path, make, message):
    with pytest.raises(ImageError, match=message):
        load_image(make(tmp_path))


def test_decompression_bomb_and_zero_size(rgb_file):
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(rgb_file, max_pixels=100)  # 1200 pixels > 2 x limit: PIL's bomb error
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(rgb_file, max_pixels=1000)  # over the limit, under twice it: the warning
    with pytest.raises(ImageError, match="zero size"):
        load_image(np.zeros((0, 4, 3), np.uint8))


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _truncated_png(directory):
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return _write(directory / "cut.png", buf.getvalue()[: len(buf.getvalue()) // 2])


def test_expand_inputs_sorts_directory_images(tmp_path, rgb_file):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "c.txt"):
        (folder / name).write_bytes(b"x")
    assert [p.name for p in expand_inputs([folder, rgb_file])] == ["a.JPG", "b.png",
                                                                  "gradient.png"]
    (tmp_path / "none").mkdir()
    with pytest.raises(ImageError, match="holds no images"):
        expand_inputs([tmp_path / "none"])
    with pytest.raises(ImageError, match="does not exist"):
        expand_inputs([tmp_path / "nope.png"])


def test_preprocess_and_deprocess_roundtrip(rgb_file):
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    transform = make_transform((3, 30, 40), mean, std)
    batch = preprocess([rgb_file, rgb_file], transform)
    assert batch.shape == (2, 3, 30, 40)
    back = deprocess(batch, mean, std)
    expected = torch.from_numpy(np.array(load_image(rgb_file))).permute(2, 0, 1) / 255
    torch.testing.assert_close(back[0], expected, atol=1e-6, rtol=0)


def test_one_channel_transform_and_deprocess(rgb_file):
    transform = make_transform((1, 8, 8), (0.5,), (0.5,))
    x = transform(load_image(rgb_file))
    assert x.shape == (1, 8, 8)
    assert deprocess(x, (0.5,), (0.5,)).shape == (3, 8, 8)
