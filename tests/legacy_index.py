"""Version-2 indexes, as releases before segments wrote them: every row's metadata in the index itself.

Tests of old caches turn a fresh cache into one (and then take out what even older writers
left out), so the reader's and extract's handling of old caches stays covered.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from features_cache import schema
from features_cache.atomic import STRING, write_strings
from features_cache.reader import FeatureCache
from features_cache.writer import virtual_layout, write_records, write_skipped, write_virtual


def rewrite_as_version_2(index: Path) -> None:
    """Rewrite ``index`` (version 3) in the version-2 layout over the same shards; its segments are deleted."""
    with FeatureCache(index) as cache:
        folder = index.resolve().parent
        shards = [(os.path.relpath(f, folder), n, size, digest, shard_id) for f, n, size, digest, shard_id
                  in zip(cache.shard_files, cache.shard_rows, cache.shard_sizes, cache.shard_digests, cache.shard_ids)]
        records, skipped, segments = cache.records(), cache.skipped(), list(cache.segment_files)
        labels, splits, class_names = cache.labels.astype(np.int32), [str(s) for s in cache.splits], cache.class_names
        row_shard, row_index = cache.row_shards.astype(np.int32), cache.row_indices.astype(np.int64)
        attrs = {k: v for k, v in cache.attrs.items() if k not in ("index_digest", "schema_version")}
        recipe, shape = cache.recipe, cache.feature_shape
    index.unlink()
    with h5py.File(index, "w") as f:
        write_virtual(f, schema.FEATURES, virtual_layout(shards, row_shard, row_index, shape, np.dtype(recipe.storage_dtype)))
        f.create_dataset(schema.LABELS, data=labels)
        write_strings(f, schema.CLASS_NAMES, class_names)
        write_strings(f, schema.SPLIT, splits)
        write_records(f, records)
        write_skipped(f, skipped)
        table = f.create_group(schema.SHARDS)
        table.create_dataset(schema.SHARD_FILES, data=np.array([s[0] for s in shards], dtype=object), dtype=STRING)
        table.create_dataset(schema.SHARD_ROWS, data=np.array([s[1] for s in shards], dtype=np.int64))
        table.create_dataset(schema.SHARD_SIZES, data=np.array([s[2] for s in shards], dtype=np.int64))
        write_strings(table, schema.SHARD_DIGESTS, [s[3] for s in shards])
        write_strings(table, schema.SHARD_IDS, [s[4] for s in shards])
        f.create_dataset(schema.ROW_SHARD, data=row_shard)
        f.create_dataset(schema.ROW_INDEX, data=row_index)
        f.attrs.update(attrs)
        f.attrs["rows_digest"] = schema.rows_digest([r.path for r in records], [r.content_hash for r in records], labels,
                                                    splits, class_names, row_shard, row_index, [s[0] for s in shards])
        f.attrs["schema_version"] = schema.SHARDED_VERSION
    for segment in segments:
        segment.unlink()
