"""Augmented views of each image, extracted once: a horizontal flip and seeded crops.

A view is one more cache beside the original (``CACHE.h5.view-flip.h5``), made by the same
run over the same images with the view applied to stage one's pixels, and its recipe names
the view. So each view is incremental, resumable, verified and compacted like any cache,
the rows of a view are the original's images (same paths, same content hashes: training
joins them by path and checks the hash), and everything that works per image (splits,
reports, audit, predictions) reads the original alone.

Crops take ``CROP_SCALE`` of the side at an offset drawn from a generator seeded by the
image's bytes and the crop's number, then resize back: the same image always gets the
same crops, on any machine, in any run.
"""

from __future__ import annotations

import hashlib
import re
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.errors import PipelineError

FLIP = "flip"
CROP = re.compile(r"crop([1-9])")
CROP_SCALE = 0.85


def parse_views(text: str | None) -> tuple[str, ...]:
    """``"flip,crop1,crop2"`` -> ``("flip", "crop1", "crop2")``, each known and named once."""
    if not text:
        return ()
    views = tuple(part.strip() for part in text.split(","))
    unknown = [view for view in views if view != FLIP and not CROP.fullmatch(view)]
    if unknown or len(set(views)) < len(views) or not all(views):
        raise PipelineError(
            f"--views {text}: use a comma-separated list of distinct views among flip and crop1..crop9 "
            f"(seeded {CROP_SCALE:.0%} crops), e.g. --views flip,crop1"
        )
    return views


def view_cache(cache: str | Path, view: str) -> Path:
    """Where the cache of ``view`` lives: beside the original's index, named after it."""
    cache = Path(cache)
    return cache.with_name(f"{cache.name}.view-{view}.h5")


def cached_views(cache: str | Path) -> list[str]:
    """The views cached beside ``cache``, in name order."""
    cache = Path(cache)
    prefix = f"{cache.name}.view-"
    return sorted(path.name[len(prefix) : -3] for path in cache.parent.glob(f"{glob_escape(prefix)}*.h5"))


def describe(view: str) -> str:
    """The view as the recipe records it: its name and the rule that makes it."""
    if view == FLIP:
        return "flip(horizontal)"
    return f"{view}(scale={CROP_SCALE},seed=blake2b(bytes)+{CROP.fullmatch(view).group(1)})"


def apply_view(pixels: np.ndarray, view: str, data: bytes, resample: Image.Resampling) -> np.ndarray:
    """The (size, size, 3) uint8 pixels of one view of the image whose file bytes are ``data``
    (crops resized back with ``resample``, the recipe's interpolation)."""
    if view == FLIP:
        return np.ascontiguousarray(pixels[:, ::-1])
    number = int(CROP.fullmatch(view).group(1))
    seed = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") + number
    rng = np.random.default_rng(seed)
    height, width = pixels.shape[:2]
    side_h, side_w = max(1, round(height * CROP_SCALE)), max(1, round(width * CROP_SCALE))
    top, left = int(rng.integers(0, height - side_h + 1)), int(rng.integers(0, width - side_w + 1))
    crop = Image.fromarray(pixels[top : top + side_h, left : left + side_w])
    return np.asarray(crop.resize((width, height), resample))
