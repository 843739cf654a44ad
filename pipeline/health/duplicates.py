"""Near-duplicate images: exact copies by content hash, and re-encoded, resized or cropped copies
found in feature space and confirmed in pixels; then their groups.

Three steps. Byte-identical files share a content hash: always a pair, at no cost. Every
other image's ``CANDIDATES`` nearest neighbours with a cosine of at least the threshold (on
the pooled, standardised codes) are candidates, and a candidate is a copy when its pixels
say so (:mod:`pipeline.health.pixels`). Where an image cannot be read now (moved, deleted),
the old rule decides for its pairs: the pair must beat both images' ordinary neighbours by
``GAP``. Exact search by blocked matrix products, so memory is ``BLOCK * n`` floats. Groups
are the chained pairs (:func:`groups`); leakage is :mod:`pipeline.health.leakage`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from pipeline.health.pixels import PIXEL_THRESHOLD, Thumbnails

BLOCK = 1024
# Measured with bench/health.py on real photos with VGG16 conv weights from HED: every planted copy
# (re-encoded, resized, 90% crop) is its source's nearest neighbour at a standardised cosine of
# 0.87 or more; distinct look-alikes reach 0.997, so the threshold only bounds the candidates.
DEFAULT_THRESHOLD = 0.8
CANDIDATES = 5
PIXEL_CANDIDATE = 0.9  # whole-thumbnail correlation for a candidate found in pixels
# The fallback where pixels cannot be read: a pair beats both images' NEIGHBOUR-th most similar
# image below the threshold by GAP (calibrated on photo-like JPEGs and the handwritten digits).
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


def _stands_out(pair: Pair, ordinary: np.ndarray, gap: float) -> bool:
    """The feature rule: the pair beats both images' ordinary neighbours by ``gap``."""
    return pair.similarity - max(ordinary[pair.a], ordinary[pair.b]) >= gap


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
            if a != b and _stands_out(Pair(a, b, value), ordinary, gap):
                key = (min(a, b), max(a, b))
                pairs[key] = max(pairs.get(key, -1.0), value)
    return [Pair(a, b, s) for (a, b), s in sorted(pairs.items(), key=lambda item: (-item[1], item[0]))]


def exact_pairs(content_hashes: Sequence[str], rows: np.ndarray | None = None, among: np.ndarray | None = None) -> list[Pair]:
    """Byte-identical images (one content hash): each pair of ``rows`` x ``among`` (default all x all)."""
    rows_set = None if rows is None else set(np.asarray(rows).tolist())
    among_set = None if among is None else set(np.asarray(among).tolist())
    members: dict[str, list[int]] = {}
    for i, digest in enumerate(content_hashes):
        members.setdefault(digest, []).append(i)
    found = set()
    for group in members.values():
        for x in range(len(group)):
            for y in range(x + 1, len(group)):
                a, b = group[x], group[y]
                if _allowed(a, b, rows_set, among_set):
                    found.add((a, b))
    return [Pair(a, b, 1.0) for a, b in sorted(found)]


def _allowed(a: int, b: int, rows: set[int] | None, among: set[int] | None) -> bool:
    """Whether the pair joins ``rows`` with ``among`` (in either order); everything when neither is given."""
    if rows is None and among is None:
        return True
    rows, among = rows if rows is not None else {a, b}, among if among is not None else {a, b}
    return (a in rows and b in among) or (b in rows and a in among)


def candidate_pairs(
    unit: np.ndarray, threshold: float, rows: np.ndarray | None = None, among: np.ndarray | None = None, k: int = CANDIDATES
) -> dict[tuple[int, int], float]:
    """``(a, b) -> cosine`` for each of ``rows``' ``k`` most similar images among ``among`` with a cosine >= ``threshold``."""
    rows = np.arange(len(unit)) if rows is None else np.asarray(rows)
    among = np.arange(len(unit)) if among is None else np.asarray(among)
    found: dict[tuple[int, int], float] = {}
    if len(rows) == 0 or len(among) == 0:
        return found
    targets = unit[among]
    for start in range(0, len(rows), BLOCK):
        block = rows[start : start + BLOCK]
        similarity = unit[block] @ targets.T
        similarity[block[:, None] == among[None, :]] = -np.inf
        kk = min(k, similarity.shape[1])
        nearest = np.argpartition(-similarity, kk - 1, axis=1)[:, :kk]
        for i, columns in enumerate(nearest):
            for j in columns:
                value = float(similarity[i, j])
                if value >= threshold:
                    a, b = int(block[i]), int(among[j])
                    key = (min(a, b), max(a, b))
                    found[key] = max(found.get(key, -1.0), value)
    return found


def near_duplicates(
    unit: np.ndarray | None,
    content_hashes: Sequence[str],
    thumbnails: Thumbnails | None,
    threshold: float = DEFAULT_THRESHOLD,
    rows: np.ndarray | None = None,
    among: np.ndarray | None = None,
    search_pixels: bool = False,
) -> list[Pair]:
    """Copies among ``rows`` x ``among`` (default all x all), most similar first: exact ones, then
    candidates confirmed in pixels (or, for unreadable images, by the margin rule).

    Candidates are each image's nearest neighbours in feature space and, with ``search_pixels``
    (the audit), in pixels too: a star field resized to half changes its CNN codes (cosine 0.54)
    far more than its pixels. That decodes a thumbnail of every image once. Without ``unit`` (the
    split planner, which must not depend on one cache's features) candidates come from pixels
    alone, a pair's similarity is its pixel correlation, and unreadable images have no pairs.
    """
    exact = exact_pairs(content_hashes, rows, among)
    same = {(p.a, p.b) for p in exact}
    candidates = {} if unit is None else candidate_pairs(unit, threshold, rows, among)
    if (search_pixels or unit is None) and thumbnails is not None:
        wholes = thumbnails.wholes(np.arange(len(content_hashes)))
        for key, value in candidate_pairs(wholes, PIXEL_CANDIDATE, rows, among).items():
            candidates.setdefault(key, value if unit is None else float(unit[key[0]] @ unit[key[1]]))
    confirmed, unreadable = [], []
    for (a, b), value in candidates.items():
        if (a, b) in same:
            continue
        pixel = thumbnails.similarity(a, b) if thumbnails is not None else None
        if pixel is None:
            if unit is not None:
                unreadable.append(Pair(a, b, value))
        elif pixel >= PIXEL_THRESHOLD:
            confirmed.append(Pair(a, b, value))
    if unreadable:
        ordinary = ordinary_similarity(unit, threshold)
        confirmed += [p for p in unreadable if _stands_out(p, ordinary, GAP)]
    return sorted([*exact, *confirmed], key=lambda p: (-p.similarity, p.a, p.b))


def groups(pairs: Sequence[Pair], n: int) -> list[list[int]]:
    """Near-duplicate groups: the connected images, chained (A~B and B~C put A, B and C in one
    group), so both images of every pair share one group and a group spans splits exactly when
    one of its pairs does. Largest first, then by first image."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for pair in pairs:
        parent[root(pair.b)] = root(pair.a)
    members: dict[int, list[int]] = {}
    for pair in pairs:
        for i in (pair.a, pair.b):
            members.setdefault(root(i), [])
    for i in range(n):
        if root(i) in members:
            members[root(i)].append(i)
    return sorted(members.values(), key=lambda g: (-len(g), g[0]))


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
