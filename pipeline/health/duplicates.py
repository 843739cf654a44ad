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
# Calibrated with bench/health.py on photo-like JPEGs (README, "Dataset health"): copies, re-encodings,
# resized copies and 90% crops score 0.89 to 1.0, the closest distinct photos 0.84.
DEFAULT_THRESHOLD = 0.86
# A near-duplicate also stands out from each image's ordinary neighbours: its similarity beats both
# images' NEIGHBOUR-th most similar image below the threshold by GAP. Planted copies clear it by 0.40
# or more; look-alike handwritten digits, whose neighbours are all alike, by at most 0.27 (99% under 0.14).
NEIGHBOUR = 5
GAP = 0.2


@dataclasses.dataclass(frozen=True)
class Pair:
    a: int
    b: int
    similarity: float


def ordinary_similarity(unit: np.ndarray, threshold: float, k: int = NEIGHBOUR) -> np.ndarray:
    """(n,) each image's k-th highest similarity to another image, among those below ``threshold``."""
    out = np.full(len(unit), -1.0)
    for start in range(0, len(unit), BLOCK):
        similarity = unit[start : start + BLOCK] @ unit.T
        rows = np.arange(similarity.shape[0])
        similarity[rows, start + rows] = -np.inf
        similarity[similarity >= threshold] = -np.inf
        kth = -np.partition(-similarity, min(k, unit.shape[0] - 1) - 1, axis=1)[:, min(k, unit.shape[0] - 1) - 1]
        out[start : start + len(rows)] = np.where(np.isfinite(kth), kth, -1.0)
    return out


def similar_pairs(
    unit: np.ndarray, threshold: float, rows: np.ndarray | None = None, among: np.ndarray | None = None, gap: float = GAP
) -> list[Pair]:
    """Pairs (a < b) with cosine >= ``threshold`` that stand out by ``gap`` from both images' ordinary neighbours.

    ``rows`` x ``among`` restricts the search (default all x all); the ordinary neighbours are
    always taken over every image.
    """
    if len(unit) < 2:
        return []
    rows = np.arange(len(unit)) if rows is None else np.asarray(rows)
    among = np.arange(len(unit)) if among is None else np.asarray(among)
    ordinary = ordinary_similarity(unit, threshold)
    pairs: dict[tuple[int, int], float] = {}
    targets = unit[among]
    for start in range(0, len(rows), BLOCK):
        block = rows[start : start + BLOCK]
        similarity = unit[block] @ targets.T
        for i, j in np.argwhere(similarity >= threshold):
            a, b = int(block[i]), int(among[j])
            value = float(similarity[i, j])
            if a != b and value - max(ordinary[a], ordinary[b]) >= gap:
                key = (min(a, b), max(a, b))
                pairs[key] = max(pairs.get(key, -1.0), value)
    return [Pair(a, b, s) for (a, b), s in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))]


def groups(pairs: Sequence[Pair], n: int) -> list[list[int]]:
    """Groups without chaining: the most similar pairs first, an image joins a group only through
    a pair with the group's first image, so A~B and B~C never put A and C together unless A~C."""
    group_of: dict[int, int] = {}
    members: list[list[int]] = []
    for pair in pairs:  # most similar first
        a, b = pair.a, pair.b
        if a in group_of and b in group_of:
            continue
        if a not in group_of and b not in group_of:
            group_of[a] = group_of[b] = len(members)
            members.append([a, b])
            continue
        seeded, new = (a, b) if a in group_of else (b, a)
        group = members[group_of[seeded]]
        if seeded == group[0]:
            group_of[new] = group_of[seeded]
            group.append(new)
    return sorted((sorted(group) for group in members), key=lambda g: (-len(g), g[0]))


def fold_groups(content_hashes: Sequence[str], near: Sequence[Sequence[int]]) -> np.ndarray:
    """(n,) group number per image for grouped cross-validation: byte-identical images (one content
    hash) and near-duplicate groups are one group, so no copy in a training fold vouches for its
    twin's label or neighbourhood."""
    parent = list(range(len(content_hashes)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[str, int] = {}
    links = [(first.setdefault(h, i), i) for i, h in enumerate(content_hashes)]
    links += [(group[0], other) for group in near for other in group[1:]]
    for a, b in links:
        parent[root(b)] = root(a)
    return np.array([root(i) for i in range(len(content_hashes))], dtype=np.int64)


def spans_splits(group: Sequence[int], splits: Sequence[str]) -> bool:
    return len({splits[i] for i in group}) > 1
