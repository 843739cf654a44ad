"""Pixel-level confirmation of near-duplicate candidates found in feature space.

Pooled CNN codes say what a photo shows, not where: on data where every image has
look-alikes (tiles of one texture, a retina, a star field) distinct photos score cosines as
high as re-encoded copies (0.997 against 0.994, measured with VGG16 conv weights from HED).
Their pixels still differ. Each candidate's two images are decoded by stage one's own code
(orientation, colour modes, 16-bit) into small grey thumbnails, and the pair is a copy when
some crop of one, up to 15% off any side, correlates with the other at ``PIXEL_THRESHOLD``
or more: re-encoded, resized and 90%-cropped copies measured 0.96 and up, the closest
distinct look-alikes 0.86 (README, "Dataset health").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.extraction.images import ImageReadError, ResizeSpec, read_image

PIXEL_THRESHOLD = 0.93
# Below this many pixels on the shorter side, pixels cannot tell two images apart: 8x8 handwritten
# digits of one class correlate at 0.97-0.99 however different the writers. Such pairs are
# left to the feature rule (pixels say nothing).
MIN_SIDE = 48
DECODE_SIDE = 64
THUMB_SIDE = 32
SCALES = (0.95, 0.9, 0.85)
PLACES = (0.0, 0.5, 1.0)  # where a crop window sits in the margin: one edge, the centre, the other edge


def _normalised(pixels: np.ndarray) -> np.ndarray:
    flat = pixels.astype(np.float32).ravel()
    flat -= flat.mean()
    norm = np.linalg.norm(flat)
    return flat / norm if norm > 0 else flat


def _window(grey: Image.Image, scale: float, fx: float, fy: float) -> np.ndarray:
    side = grey.width
    crop = int(round(side * scale))
    left, top = int(round((side - crop) * fx)), int(round((side - crop) * fy))
    window = grey.crop((left, top, left + crop, top + crop)).resize((THUMB_SIDE, THUMB_SIDE), Image.Resampling.BILINEAR)
    return _normalised(np.asarray(window))


class Thumbnails:
    """Grey thumbnails of a cache's images, decoded on first use; None for a file that cannot be read
    now, or too small for its pixels to tell it from a look-alike (``MIN_SIDE``)."""

    def __init__(self, root: Path, paths: Sequence[str]) -> None:
        self.root, self.paths = Path(root), paths
        self._spec = ResizeSpec(DECODE_SIDE)
        self._views: dict[int, list[np.ndarray] | None] = {}

    def views(self, row: int) -> list[np.ndarray] | None:
        """The whole thumbnail first, then every crop window (scales x places x places)."""
        if row not in self._views:
            self._views[row] = self._decode(row)
        return self._views[row]

    def _decode(self, row: int) -> list[np.ndarray] | None:
        path = self.root / self.paths[row]
        try:
            with Image.open(path) as header:
                if min(header.size) < MIN_SIDE:
                    return None
            pixels, _ = read_image(str(path), self._spec)
        except (ImageReadError, OSError, ValueError, Image.DecompressionBombError):
            return None
        grey = Image.fromarray(pixels).convert("L")
        return [_window(grey, 1.0, 0.5, 0.5)] + [
            _window(grey, scale, fx, fy) for scale in SCALES for fx in PLACES for fy in PLACES
        ]

    def wholes(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), THUMB_SIDE**2) whole thumbnails, zero for images pixels cannot judge: for a search in pixels."""
        out = np.zeros((len(rows), THUMB_SIDE * THUMB_SIDE), dtype=np.float32)
        for i, row in enumerate(rows):
            views = self.views(int(row))
            if views is not None:
                out[i] = views[0]
        return out

    def similarity(self, a: int, b: int) -> float | None:
        """The best correlation of one image's crops (or the whole) with the other whole; None if either is unreadable."""
        views_a, views_b = self.views(a), self.views(b)
        if views_a is None or views_b is None:
            return None
        whole_a, whole_b = views_a[0], views_b[0]
        return float(max(np.max(np.stack(views_a) @ whole_b), np.max(np.stack(views_b) @ whole_a)))
