"""Images per class and split, and the splits with too few of a class to measure it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# Fewer held-out images of a class than this and its recall moves by 20 points per image.
TOO_FEW = 5


def counts(labels: np.ndarray, splits: Sequence[str], class_names: Sequence[str]) -> dict[str, dict[str, int]]:
    """{class: {split: n}} with every split that occurs (``all`` included)."""
    names = sorted({s for s in splits})
    table = {}
    for k, name in enumerate(class_names):
        mine = [s for s, label in zip(splits, labels) if label == k]
        table[name] = {"all": len(mine), **{split: mine.count(split) for split in names}}
    return table


def warnings(table: dict[str, dict[str, int]]) -> list[str]:
    """One line per held-out split naming every class with fewer than TOO_FEW images there, and one for a strong imbalance."""
    lines = []
    for split in ("val", "test"):
        few = [f"{name} {row[split]}" for name, row in table.items() if split in row and row[split] < TOO_FEW]
        if few:
            what = "class has" if len(few) == 1 else f"{len(few)} of {len(table)} classes have"
            lines.append(
                f"{what} fewer than {TOO_FEW} {split} images, too few to measure them: {', '.join(few)}"
            )
    sizes = [row["all"] for row in table.values()]
    if sizes and min(sizes) and max(sizes) / min(sizes) >= 10:
        lines.append(f"classes range from {min(sizes)} to {max(sizes)} images: consider --class-weight balanced")
    return lines
