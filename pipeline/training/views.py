"""The cached augmented views of training images, joined to the original cache by path and content.

Views are caches beside the original (``pipeline.extraction.views``); a view row belongs to the
image with the same path and content hash, so a view is always in its image's split and only
training ever reads one. A view made another way than the original (other weights, size,
layer, precision ...) or missing an image is refused with the command that fixes it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from features_cache.reader import FeatureCache
from pipeline.errors import PipelineError
from pipeline.extraction.views import view_cache
from pipeline.training.splits import plan_cache_splits


def load_views(
    cache: FeatureCache, rows: np.ndarray, views: Sequence[str], through: Callable[[np.ndarray], np.ndarray] | None = None,
) -> np.ndarray:
    """(len(rows), len(views), h, w, c) float32 maps: view k of the image in cache row ``rows[i]`` at ``[i, k]``."""
    parts = []
    for view in views:
        path = view_cache(cache.path, view)
        again = (
            f"run `pipeline extract DATA --cache {cache.path} --views {','.join(views)}` (with the original's options; "
            "add --views-of train and this --split for the training images only) again"
        )
        if not path.exists():
            raise PipelineError(f"{path}: no cache of view {view!r} beside {cache.path}; {again}")
        with FeatureCache(path) as other:
            if dataclasses.replace(other.recipe, view="") != cache.recipe:
                raise PipelineError(
                    f"{path} was made with other settings than {cache.path} "
                    f"({'; '.join(cache.recipe.differences(dataclasses.replace(other.recipe, view='')))}); {again}"
                )
            position = {p: i for i, p in enumerate(other.paths)}
            found = np.array([position.get(cache.paths[r], -1) for r in rows], dtype=np.int64)
            ours, theirs = [r.content_hash for r in cache.records()], [r.content_hash for r in other.records()]
            stale = [cache.paths[r] for r, f in zip(rows, found) if f < 0 or theirs[f] != ours[r]]
            if stale:
                raise PipelineError(f"{path}: {len(stale)} training images have no view {view} of their content (e.g. {stale[0]}); {again}")
            maps = other.features(found).astype(np.float32, copy=False)
        parts.append(maps if through is None else through(maps))
    return np.stack(parts, axis=1)


def training_paths(cache: FeatureCache, fractions: Sequence[float]) -> tuple[frozenset[str], list[str]]:
    """The paths of the images ``train --split fractions`` trains on, and how their split was decided.

    The split is decided and remembered exactly as ``train`` does it, so ``extract --views-of train``
    makes views for what training will read and nothing else, and the later ``train`` finds them.
    """
    plan = plan_cache_splits(cache, fractions)
    return frozenset(cache.paths[row] for row in plan.rows("train")), plan.notes
