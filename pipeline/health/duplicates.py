"""Near-duplicate images: pairs whose embeddings have a cosine similarity over a threshold, and their groups.

Exact search by blocked matrix products: (block x n) similarities at a time, so memory is
``BLOCK * n`` floats; 20,000 images take seconds on two cores, which is why no approximate
index is used. Groups are the connected components of the pairs; a group that spans
splits is leakage: the same photo scored in test after training on it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

BLOCK = 1024
# Calibrated on photo-like JPEGs (see README, "Dataset health"): copies, re-encodings, resized
# copies and small crops score above it; distinct photos below.
DEFAULT_THRESHOLD = 0.86


@dataclasses.dataclass(frozen=True)
class Pair:
    a: int
    b: int
    similarity: float


def similar_pairs(unit: np.ndarray, threshold: float, rows: np.ndarray | None = None, among: np.ndarray | None = None) -> list[Pair]:
    """Pairs (a < b) with cosine >= ``threshold``; ``rows`` x ``among`` restricts the search (default all x all)."""
    rows = np.arange(len(unit)) if rows is None else np.asarray(rows)
    among = np.arange(len(unit)) if among is None else np.asarray(among)
    pairs: dict[tuple[int, int], float] = {}
    targets = unit[among]
    for start in range(0, len(rows), BLOCK):
        block = rows[start : start + BLOCK]
        similarity = unit[block] @ targets.T
        hits = np.argwhere(similarity >= threshold)
        for i, j in hits:
            a, b = int(block[i]), int(among[j])
            if a != b:
                key = (min(a, b), max(a, b))
                pairs[key] = max(pairs.get(key, -1.0), float(similarity[i, j]))
    return [Pair(a, b, s) for (a, b), s in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))]


def groups(pairs: Sequence[Pair], n: int) -> list[list[int]]:
    """Connected components of the pairs (union-find), each sorted, largest first."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        parent[root(pair.a)] = root(pair.b)
    members: dict[int, list[int]] = {}
    for i in {index for pair in pairs for index in (pair.a, pair.b)}:
        members.setdefault(root(i), []).append(i)
    return sorted((sorted(group) for group in members.values()), key=lambda g: (-len(g), g[0]))


def spans_splits(group: Sequence[int], splits: Sequence[str]) -> bool:
    return len({splits[i] for i in group}) > 1
