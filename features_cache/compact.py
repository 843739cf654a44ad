"""Compaction: live rows into fresh, full shards (reclaiming dead rows), or into one standalone file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from features_cache import schema
from features_cache.errors import index_bytes, no_space, shard_bytes
from features_cache.lock import exclusive_writer
from features_cache.ownership import Owner
from features_cache.reader import FeatureCache
from features_cache.shards import (
    collect_garbage,
    file_digest,
    finish_clean_up,
    new_shard_path,
    remove_temporaries,
    write_shard,
)
from features_cache.writer import FeatureSource, Row, standalone_bytes, write_cache, write_index

_REWRITTEN = ("schema_version", "complete", "identity", "written_at", "rows_digest", "index_digest")
ROWS_PER_SHARD = 4096


def compact(path: str | os.PathLike, to: str | os.PathLike | None = None, compression: str | None = None) -> Path:
    """Rewrite the cache at ``path`` in place, or as one standalone file at ``to``; returns what was written.

    New shards are stored with ``compression`` (``none`` or ``gzip``); by default as most of
    the cache's shards are.

    A full disk is one line naming what the whole job needs; an in-place compaction that
    fails removes the shards it had written, so that figure stays true for the next try.
    """
    path = Path(path)
    with exclusive_writer(path):
        remove_temporaries(path.parent, f".{path.name}.tmp-")
        remove_temporaries(schema.shards_dir(path))
        finish_clean_up(path)
        with FeatureCache(path) as cache:
            owner = Owner.after(cache.attrs)
            attrs = {k: v for k, v in cache.attrs.items() if k not in _REWRITTEN and not k.startswith("recipe.")}
            labels, splits = cache.labels, cache.splits
            records = cache.records()
            if to is not None:
                target = Path(to)
                rows = [Row(r, int(labels[i]), str(splits[i]), FeatureSource(str(f), n)) for i, (r, (f, n)) in enumerate(zip(records, cache.sources()))]
                try:
                    write_cache(target, recipe=cache.recipe, feature_shape=cache.feature_shape, class_names=cache.class_names,
                                rows=rows, skipped=cache.skipped(), attrs=attrs)
                except OSError as error:
                    raise no_space(target.parent, standalone_bytes(cache.feature_shape, cache.storage_dtype, rows), error) from None
                return target
            schema.shards_dir(path).mkdir(exist_ok=True)
            if compression is None:
                kinds = cache.shard_compression
                compression = "gzip" if kinds.count("gzip") * 2 > len(kinds) else "none"
            rows, table, written = [], [], []
            folder = path.parent.resolve()
            try:
                for start in range(0, len(cache), ROWS_PER_SHARD):
                    stop = min(len(cache), start + ROWS_PER_SHARD)
                    features = cache.features(np.arange(start, stop), dtype=cache.storage_dtype)
                    shard = new_shard_path(path)
                    shard_id = write_shard(shard, cache.recipe, features, records[start:stop], [], compression, owner)
                    written.append(shard)
                    table.append((os.path.relpath(shard.resolve(), folder), stop - start, shard.stat().st_size, file_digest(shard), shard_id))
                    rows += [Row(records[i], int(labels[i]), str(splits[i]), FeatureSource(str(shard), i - start)) for i in range(start, stop)]
                segments = write_index(path, recipe=cache.recipe, feature_shape=cache.feature_shape,
                                       class_names=cache.class_names, rows=rows, skipped=cache.skipped(), attrs=attrs, shards=table,
                                       owner=owner)
            except OSError as error:
                for shard in written:
                    shard.unlink(missing_ok=True)
                raise no_space(path.parent, _in_place_bytes(cache, records), error) from None
        collect_garbage(path, {folder / name for name, *_ in table} | set(segments))
        return path


def _in_place_bytes(cache: FeatureCache, records: list) -> int:
    """What rewriting every live row into new shards and a new index takes, the old files still there."""
    row_bytes = int(np.prod(cache.feature_shape, dtype=np.int64)) * cache.storage_dtype.itemsize
    paths = sum(len(r.path.encode()) for r in records)
    shards = -(-len(records) // ROWS_PER_SHARD)
    return shard_bytes(len(records), row_bytes, paths) + shards * (32 << 10) + index_bytes(len(records))
