"""Decoding: every format and mode becomes the right RGB pixels; broken files give a reason."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from image_factory import (
    cmyk_jpeg,
    decompression_bomb_png,
    exif_rotated_jpeg,
    malformed_exif_jpeg,
    palette_with_transparency,
    photo,
    rgba_png,
    save,
    sixteen_bit_png,
    truncated_jpeg,
    two_frame_gif,
)
from PIL import Image

from pipeline.extraction.images import ImageReadError, ResizeSpec, read_image

SPEC = ResizeSpec(32)


def pixels(path, spec: ResizeSpec = SPEC) -> np.ndarray:
    array, digest = read_image(str(path), spec)
    assert array.shape == (spec.size, spec.size, 3) and array.dtype == np.uint8
    assert len(digest) == 32
    return array


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP"])
def test_every_format_decodes_to_rgb_close_to_the_source(tmp_path, fmt):
    source = photo(32, 32, seed=1)
    path = save(source, tmp_path / f"image.{fmt.lower()}", fmt, **({"quality": 95} if fmt in ("JPEG", "WEBP") else {}))
    decoded = pixels(path).astype(np.float32)
    reference = Image.open(path).convert("RGB") if fmt == "GIF" else source  # GIF quantises colours
    assert np.abs(decoded - np.asarray(reference, dtype=np.float32)).mean() < 12


def test_format_is_read_from_content_not_extension(tmp_path):
    path = save(Image.new("RGB", (32, 32), (10, 200, 30)), tmp_path / "actually_png.jpg", "PNG")
    assert tuple(pixels(path)[0, 0]) == (10, 200, 30)


def test_grayscale_becomes_three_equal_channels(tmp_path):
    path = save(Image.new("L", (32, 32), 77), tmp_path / "gray.png", "PNG")
    assert (pixels(path) == 77).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    out = pixels(sixteen_bit_png(tmp_path / "deep.png"), ResizeSpec(32, interpolation="nearest"))
    assert tuple(out[0, 0]) == (128, 128, 128)
    assert tuple(out[0, -1]) == (255, 255, 255)


def test_palette_transparency_is_composited_on_white(tmp_path):
    out = pixels(palette_with_transparency(tmp_path / "palette.png"), ResizeSpec(16, interpolation="nearest"))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, -1]) == (0, 255, 0)


def test_rgba_alpha_is_composited_on_white(tmp_path):
    out = pixels(rgba_png(tmp_path / "rgba.png"), ResizeSpec(16, interpolation="nearest"))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, -1]) == (0, 0, 255)


def test_cmyk_becomes_rgb(tmp_path):
    out = pixels(cmyk_jpeg(tmp_path / "cmyk.jpg")).astype(int)
    assert np.abs(out[8, 8] - np.array([0, 255, 255])).max() <= 6


def test_gif_uses_the_first_frame(tmp_path):
    out = pixels(two_frame_gif(tmp_path / "anim.gif"))
    assert tuple(out[4, 4]) == (255, 0, 0)


def test_exif_orientation_is_applied(tmp_path):
    # Stored landscape: red left, blue right. Orientation 6 rotates 90 degrees clockwise: red on top.
    out = pixels(exif_rotated_jpeg(tmp_path / "rotated.jpg")).astype(int)
    assert out[2, 16, 0] > 200 and out[2, 16, 2] < 60
    assert out[-3, 16, 2] > 200 and out[-3, 16, 0] < 60


def test_malformed_exif_falls_back_to_stored_pixels(tmp_path):
    path = malformed_exif_jpeg(tmp_path / "bad_exif.jpg")
    with pytest.warns(UserWarning, match="Corrupt EXIF"):
        expected = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.array_equal(pixels(path), expected)


def test_crop_keeps_aspect_by_cutting_the_long_side(tmp_path):
    image = Image.new("RGB", (96, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))
    path = save(image, tmp_path / "wide.png", "PNG")
    stretched = pixels(path, ResizeSpec(32, resize="stretch", interpolation="nearest"))
    cropped = pixels(path, ResizeSpec(32, resize="crop", interpolation="nearest"))
    assert tuple(stretched[16, 0]) == (255, 0, 0)
    assert (cropped == (0, 0, 255)).all()


def test_huge_jpeg_decodes_through_draft(tmp_path):
    path = save(Image.new("RGB", (6000, 4000), (30, 90, 200)), tmp_path / "huge.jpg", "JPEG")
    out = pixels(path, ResizeSpec(224)).astype(int)
    assert np.abs(out - np.array([30, 90, 200])).max() <= 3


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("these are my notes, not a picture"), "not an image"),
        (truncated_jpeg, "corrupt or truncated"),
        (decompression_bomb_png, "decompression"),
    ],
    ids=["empty", "not-an-image", "truncated", "bomb"],
)
def test_broken_files_raise_a_reason(tmp_path, make, reason):
    path = tmp_path / "broken.jpg"
    make(path)
    with pytest.raises(ImageReadError, match=reason):
        read_image(str(path), SPEC)


def test_pixel_limit_is_configurable(tmp_path):
    path = save(photo(100, 100), tmp_path / "big.png", "PNG")
    with pytest.raises(ImageReadError, match="over the decompression-bomb limit of 5,000; raise --max-pixels"):
        read_image(str(path), ResizeSpec(32, max_pixels=5000))


def test_bad_resize_settings_are_refused():
    with pytest.raises(ValueError, match="resize must be one of stretch, crop. Received: resize='squash'"):
        ResizeSpec(32, resize="squash")
