"""Photo-like JPEG content for the benchmarks: smooth colour fields, blurred shapes and sensor noise,
so file sizes and decoding costs are close to real photos'. Seeded by index: the same image every run."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

LARGE_EVERY = 33  # one image in 33 (about 3%) is several megapixels, as in a real photo folder


def _image_size(index: int, rng: np.random.Generator) -> tuple[int, int]:
    """Around 500x375 in either orientation, and a few camera-sized images."""
    if index % LARGE_EVERY == 0:
        return (3000, 2000) if rng.random() < 0.7 else (2000, 3000)
    width = int(rng.integers(420, 641))
    aspect = rng.choice([3 / 4, 2 / 3, 4 / 3, 1.0], p=[0.55, 0.2, 0.2, 0.05])
    return width, int(round(width * aspect))


def photo(index: int) -> Image.Image:
    """Smooth colour fields, blurred shapes and sensor noise: JPEG sizes close to real photos."""
    rng = np.random.default_rng(index)
    width, height = _image_size(index, rng)
    grid = rng.integers(0, 256, (int(rng.integers(2, 6)), int(rng.integers(2, 6)), 3), dtype=np.uint8)
    image = Image.fromarray(grid, "RGB").resize((width, height), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 12))):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        w, h = rng.uniform(0.05, 0.4) * width, rng.uniform(0.05, 0.4) * height
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x, y, x + w, y + h), fill=fill)
    image = image.filter(ImageFilter.GaussianBlur(radius=max(1.0, width / 400)))
    noisy = np.asarray(image, dtype=np.float32) + rng.normal(0, 5, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")


