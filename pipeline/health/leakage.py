"""Leakage, defined once for ``train``, ``report``, ``audit``, its page and its CSV files.

A val or test image *leaks* when one of the audit's near-duplicate pairs (``duplicates.csv``)
joins it to a train image: a test photo whose copy (or re-encoded, resized, slightly cropped
copy) was trained on scores as if the model generalised. Every command finds the pairs with
the same call (:func:`find_pairs`: all images against all, candidates in features and in
pixels, confirmed in pixels), so the count ``train`` warns about is the count the audit
prints and the number of rows of its ``leakage.csv``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from features_cache.reader import FeatureCache
from pipeline.health import duplicates
from pipeline.health.embeddings import pooled, unit_rows
from pipeline.health.pixels import Thumbnails

# Above this many images the check costs a second read of every feature; `pipeline audit` does it then.
MAX_IMAGES = 50_000
HELD_OUT = ("val", "test")


@dataclasses.dataclass(frozen=True)
class Leak:
    """A held-out image (``row``) and its most similar near-duplicate in train (``twin``)."""

    row: int
    twin: int
    similarity: float


def find_pairs(
    unit: np.ndarray,
    content_hashes: Sequence[str],
    thumbnails: Thumbnails | None,
    threshold: float = duplicates.DEFAULT_THRESHOLD,
) -> list[duplicates.Pair]:
    """The near-duplicate pairs every command uses: all images against all, found in features and pixels."""
    return duplicates.near_duplicates(unit, content_hashes, thumbnails, threshold, search_pixels=True)


def leaks(pairs: Sequence[duplicates.Pair], splits: Sequence[str]) -> list[Leak]:
    """One per val or test image with a pair to a train image, val first, then by row."""
    best: dict[int, Leak] = {}
    for pair in pairs:
        for row, twin in ((pair.a, pair.b), (pair.b, pair.a)):
            better = row not in best or pair.similarity > best[row].similarity
            if splits[row] in HELD_OUT and splits[twin] == "train" and better:
                best[row] = Leak(row, twin, pair.similarity)
    return sorted(best.values(), key=lambda leak: (HELD_OUT.index(splits[leak.row]), leak.row))


def leak_counts(found: Sequence[Leak], splits: Sequence[str]) -> dict[str, int]:
    """Leaking images per held-out split."""
    return {split: sum(1 for leak in found if splits[leak.row] == split) for split in HELD_OUT}


def leakage_notes(
    cache: FeatureCache,
    splits: np.ndarray,
    threshold: float = duplicates.DEFAULT_THRESHOLD,
    unit: np.ndarray | None = None,
    thumbnails: Thumbnails | None = None,
) -> list[str]:
    """One warning line per held-out split with images whose near-duplicate is in train.

    ``unit`` and ``thumbnails`` are the cache's embeddings and thumbnails when the caller has them already."""
    if len(cache) > MAX_IMAGES or len(cache) < 2:
        return []
    unit = unit_rows(pooled(cache)) if unit is None else unit
    hashes = [record.content_hash for record in cache.records()]
    thumbnails = Thumbnails(cache.data_root, cache.paths) if thumbnails is None else thumbnails
    names = [str(s) for s in splits]
    found = leaks(find_pairs(unit, hashes, thumbnails, threshold), names)
    notes = []
    for split in HELD_OUT:
        rows = [leak.row for leak in found if names[leak.row] == split]
        if rows:
            examples = ", ".join(cache.paths[i] for i in rows[:3])
            notes.append(
                f"warning: {len(rows)} {split} {'image has' if len(rows) == 1 else 'images have'} a near-duplicate in train "
                f"(e.g. {examples}): {split} scores are inflated; `pipeline audit {cache.path}` lists them in leakage.csv"
            )
    return notes
