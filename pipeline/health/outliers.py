"""Images far from every other image: often a wrong file, a blank frame or a class nobody meant to collect.

The score of an image is its mean cosine distance to its k nearest other images, each
image scored against the rest only (leave-one-out: it never counts as its own
neighbour), its near-duplicates excluded so a pair of odd files does not hide itself.
An image is an outlier when its score is far above the typical one: a robust z-score
(median and MAD) over ``Z_THRESHOLD``.
"""

from __future__ import annotations

import numpy as np

K = 5
Z_THRESHOLD = 3.5
BLOCK = 1024


def knn_distance(unit: np.ndarray, k: int = K, duplicate_threshold: float = 0.999) -> np.ndarray:
    """(n,) mean cosine distance to the k nearest other images (near-identical ones skipped)."""
    n = len(unit)
    k = max(1, min(k, n - 1))
    scores = np.zeros(n, dtype=np.float64)
    for start in range(0, n, BLOCK):
        similarity = unit[start : start + BLOCK] @ unit.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, start + rows] = -np.inf  # never its own neighbour
        similarity[similarity >= duplicate_threshold] = -np.inf
        nearest = -np.sort(-similarity, axis=1)[:, :k]
        nearest[~np.isfinite(nearest)] = -1.0
        scores[start : start + len(rows)] = (1.0 - nearest).mean(axis=1)
    return scores


def robust_z(scores: np.ndarray) -> np.ndarray:
    """(score - median) / (1.4826 MAD): about a standard deviation for normal data, not moved by the outliers."""
    median = np.median(scores)
    mad = np.median(np.abs(scores - median)) * 1.4826
    return (scores - median) / mad if mad > 0 else np.zeros_like(scores)
