"""Real image files for tests, made with Pillow: every mode, format and kind of breakage."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def photo(width: int = 96, height: int = 72, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB image (gradients, a blob, noise) that differs per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = rng.uniform(0, 255, size=3)
    slope = rng.uniform(-2, 2, size=(3, 2))
    channels = [base[c] + slope[c, 0] * x + slope[c, 1] * y for c in range(3)]
    cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(5, width / 2)
    blob = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
    pixels = np.stack(channels, axis=-1)
    pixels[blob] = rng.uniform(0, 255, size=3)
    pixels += rng.normal(0, 6, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def save(image: Image.Image, path: Path, format: str | None = None, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=format, **options)
    return path


def halves(width: int, height: int, left=(255, 0, 0), right=(0, 0, 255)) -> Image.Image:
    """Left half one colour, right half another: makes rotations easy to check."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = left
    pixels[:, width // 2 :] = right
    return Image.fromarray(pixels, "RGB")


def exif_rotated_jpeg(path: Path, orientation: int = 6) -> Path:
    """A landscape JPEG whose EXIF says 'rotate 90 degrees clockwise to display' (orientation 6)."""
    image = halves(64, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(image, path, "JPEG", quality=95, exif=exif.tobytes())


def malformed_exif_jpeg(path: Path) -> Path:
    return save(photo(48, 40, seed=3), path, "JPEG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff\x01")


def sixteen_bit_png(path: Path) -> Path:
    """A 16-bit grayscale PNG: left half 32768 (mid grey), right half 65535 (white)."""
    pixels = np.full((16, 32), 65535, dtype=np.uint16)
    pixels[:, :16] = 32768
    image = Image.fromarray(pixels)
    assert image.mode == "I;16"
    return save(image, path, "PNG")


def palette_with_transparency(path: Path) -> Path:
    """A palette PNG: index 0 fully transparent, index 1 opaque green."""
    image = Image.new("P", (16, 16), 0)
    image.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    image.paste(1, (8, 0, 16, 16))
    return save(image, path, "PNG", transparency=0)


def rgba_png(path: Path) -> Path:
    """Left half transparent red (alpha 0), right half opaque blue."""
    pixels = np.zeros((16, 16, 4), dtype=np.uint8)
    pixels[:, :8] = (255, 0, 0, 0)
    pixels[:, 8:] = (0, 0, 255, 255)
    return save(Image.fromarray(pixels, "RGBA"), path, "PNG")


def cmyk_jpeg(path: Path) -> Path:
    """A CMYK JPEG of pure cyan: RGB (0, 255, 255)."""
    return save(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), path, "JPEG", quality=100)


def two_frame_gif(path: Path) -> Path:
    """First frame red, second frame blue; only the first counts."""
    frames = [Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 0, 255))]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, format="GIF", save_all=True, append_images=frames[1:])
    return path


def truncated_jpeg(path: Path) -> Path:
    buffer = io.BytesIO()
    photo(128, 96, seed=7).save(buffer, format="JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 3])
    return path


def decompression_bomb_png(path: Path, side: int = 60_000) -> Path:
    """A tiny PNG whose header claims side x side pixels: decoding it would need gigabytes."""
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    ihdr = struct.pack(">II", side, side) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    return path


def make_class_folders(root: Path, classes: dict[str, int], size: tuple[int, int] = (60, 45), start_seed: int = 0) -> Path:
    """``root/<class>/img_<i>.jpg`` photo-like JPEGs, each class with its own colour bias."""
    seed = start_seed
    for class_index, (name, count) in enumerate(classes.items()):
        for i in range(count):
            image = photo(*size, seed=seed)
            pixels = np.asarray(image).astype(np.int16)
            pixels[..., class_index % 3] += 60
            save(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), root / name / f"img_{i:03d}.jpg", "JPEG")
            seed += 1
    return root
