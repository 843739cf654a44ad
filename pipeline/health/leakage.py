"""The warning ``train`` and ``report`` give when held-out images have near-duplicates in train.

A test photo whose copy (or re-encoded, resized, slightly cropped copy) was trained on
scores as if the model generalised; this counts such images per held-out split.
"""

from __future__ import annotations

import numpy as np

from features_cache.reader import FeatureCache
from pipeline.health import duplicates
from pipeline.health.embeddings import pooled, unit_rows
from pipeline.health.pixels import Thumbnails

# Above this many images the check costs a second read of every feature; `pipeline audit` does it then.
MAX_IMAGES = 50_000


def leaked_rows(
    unit: np.ndarray, content_hashes: list[str], thumbnails: Thumbnails | None, held_out: np.ndarray, train: np.ndarray,
    threshold: float,
) -> np.ndarray:
    """Rows of ``held_out`` with a near-duplicate (the audit's rule) among ``train``."""
    pairs = duplicates.near_duplicates(unit, content_hashes, thumbnails, threshold, rows=held_out, among=train)
    held = set(held_out.tolist())
    return np.array(sorted({p.a if p.a in held else p.b for p in pairs}), dtype=np.int64)


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
    train = np.flatnonzero(splits == "train")
    notes = []
    for split in ("val", "test"):
        rows = leaked_rows(unit, hashes, thumbnails, np.flatnonzero(splits == split), train, threshold)
        if len(rows):
            examples = ", ".join(cache.paths[i] for i in rows[:3])
            notes.append(
                f"warning: {len(rows)} {split} {'image has' if len(rows) == 1 else 'images have'} a near-duplicate in train "
                f"(cosine >= {threshold}; e.g. {examples}): "
                f"{split} scores are inflated; `pipeline audit {cache.path}` lists them"
            )
    return notes
