"""A train/val/test split that never moves an image once decided.

Each image without a stored split draws a number in [0, 1) from a hash of its path
relative to the data root, and the fractions cut [0, 1) into train, val and test.
The decision depends on nothing but that path, so adding images never moves old
ones and moving the data folder changes nothing. Every class gets the fractions in
expectation (the hash ignores the class); a per-class ranking would be exactly
stratified but would reshuffle old images whenever a class grows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from pipeline.errors import PipelineError

SPLITS = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.7, 0.15, 0.15)


def path_unit(path: str, salt: str = "") -> float:
    """A uniform number in [0, 1) decided only by ``salt`` and the relative POSIX ``path``."""
    digest = hashlib.blake2b(f"{salt}\0{path}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or fractions[0] <= 0:
        raise PipelineError(
            f"split fractions {','.join(map(str, fractions))} are not train,val,test shares summing to 1; "
            "use e.g. --split 0.7,0.15,0.15"
        )
    return (float(fractions[0]), float(fractions[1]), float(fractions[2]))


def assign_splits(
    paths: Sequence[str],
    stored_splits: np.ndarray,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    salt: str = "",
) -> np.ndarray:
    """An object array of "train"/"val"/"test": the stored split where there is one, else the path hash's.

    The class is not needed: a per-image threshold splits every class in the same
    proportions in expectation.
    """
    train, val, _ = check_fractions(fractions)
    if len(paths) != len(stored_splits):
        raise ValueError("paths and stored_splits must have the same length")
    out = np.empty(len(paths), dtype=object)
    for i, (path, stored) in enumerate(zip(paths, stored_splits)):
        if stored:
            out[i] = str(stored)
            continue
        u = path_unit(path, salt)
        out[i] = "train" if u < train else "val" if u < train + val else "test"
    return out
