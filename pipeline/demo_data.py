"""The embedded default dataset: scikit-learn's 1,797 handwritten digits as PNG class folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from features_cache import atomic

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def write_digits(folder: str | Path, per_class: int | None = None) -> Path:
    """Write the digits (0..16 scaled to 0..255, 8x8 grayscale) as ``folder/<class>/<n>.png``.

    Written once: an existing, complete folder is left as it is, so re-runs are incremental.
    """
    from sklearn.datasets import load_digits

    folder = Path(folder)
    digits = load_digits()
    counts = dict.fromkeys(range(10), 0)
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target)):
        if per_class is not None and counts[target] >= per_class:
            continue
        counts[target] += 1
        path = folder / CLASS_NAMES[target] / f"digit_{index:04d}.png"
        if path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        image = Image.fromarray(np.round(pixels * (255 / 16)).astype(np.uint8), "L")
        with atomic.replacing(path) as tmp:
            image.save(tmp, format="PNG")
    return folder
