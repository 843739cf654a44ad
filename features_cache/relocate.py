"""Recording where a moved cache's shards are now, so every HDF5 reader finds them again.

The index's virtual ``features`` names each shard by its path relative to the index's
folder, as written. A cache renamed together with its shards folder (``a.h5`` and
``a.h5.shards`` to ``b.h5`` and ``b.h5.shards``) still reads through :class:`FeatureCache`,
which looks in the folder named after the index as it is called now, but plain HDF5
readers see NaN rows until the index names the new folder. Any commit (``extract``,
``compact``) records it; :func:`relocate` does only that, rewriting the index alone.
"""

from __future__ import annotations

import os
from pathlib import Path

from features_cache import schema
from features_cache.lock import exclusive_writer
from features_cache.reader import FeatureCache
from features_cache.shards import collect_garbage
from features_cache.writer import FeatureSource, Row, write_index

KEPT_AS_WRITTEN = ("schema_version", "complete", "identity", "written_at", "rows_digest", "index_digest")


def relocate(path: str | os.PathLike) -> bool:
    """Rewrite the index at ``path`` to name its shards where they are now; False when it already did."""
    path = Path(path)
    with exclusive_writer(path):
        with FeatureCache(path) as cache:
            if not cache.relocated:
                return False
            folder = path.resolve().parent
            table = [(os.path.relpath(file, folder), rows, size, digest, shard_id) for file, rows, size, digest, shard_id
                     in zip(cache.shard_files, cache.shard_rows, cache.shard_sizes, cache.shard_digests, cache.shard_ids)]
            rows = [Row(record, int(label), str(split), FeatureSource(str(file), index))
                    for record, label, split, (file, index) in zip(cache.records(), cache.labels, cache.splits, cache.sources())]
            attrs = {k: v for k, v in cache.attrs.items() if k not in KEPT_AS_WRITTEN and not k.startswith("recipe.")}
            live = write_index(path, recipe=cache.recipe, feature_shape=cache.feature_shape, class_names=cache.class_names,
                               rows=rows, skipped=cache.skipped(), attrs=attrs, shards=table, previous=cache)
        collect_garbage(path, {folder / name for name, *_ in table} | set(live))  # under the lock, as every writer
    return True


def unseen(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(shard, why)`` per shard that plain HDF5 readers of the index's ``features`` do not read where
    :class:`FeatureCache` does: they read NaN rows there, or another copy's file (another cache's, which
    may change without this one). One row per shard is read through the virtual dataset, at its
    stored position (the index's order, which after incremental commits is not the rows' path order)."""
    import h5py
    import numpy as np

    with FeatureCache(path) as cache:
        if cache.version == schema.STANDALONE_VERSION or not len(cache):
            return []
        storage = cache.storage_order()
        first_rows: dict[int, int] = {}
        for position, shard in enumerate(cache.row_shards[storage].tolist()):
            first_rows.setdefault(shard, position)
        folder = cache.path.resolve().parent
        files = [(file, folder / recorded) for file, recorded in zip(cache.shard_files, cache.recorded_files)]
    found = []
    with h5py.File(path, "r") as f:
        features = f[schema.FEATURES]
        for shard, position in sorted(first_rows.items()):
            file, recorded = files[shard]
            if np.isnan(features[position]).all():
                found.append((file, f"plain HDF5 readers of {path} read NaN for its rows: the index names it "
                              f"{recorded}; run `pipeline verify --repair {path}` to record where it is now"))
            elif file != recorded:
                found.append((file, f"plain HDF5 readers of {path} read {recorded} (a copy this cache does not own) "
                              f"instead; run `pipeline verify --repair {path}` to record its own file"))
    return found
