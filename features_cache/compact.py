"""Compaction: live rows into fresh, full shards (reclaiming dead rows), or into one standalone file."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from features_cache import schema
from features_cache.errors import no_space
from features_cache.lock import exclusive_writer
from features_cache.reader import FeatureCache
from features_cache.shards import collect_garbage, file_digest, new_shard_path, remove_temporaries, write_shard
from features_cache.writer import FeatureSource, Row, write_cache, write_index

_REWRITTEN = ("schema_version", "complete", "identity", "written_at")
ROWS_PER_SHARD = 4096


def compact(path: str | os.PathLike, to: str | os.PathLike | None = None) -> Path:
    """Rewrite the cache at ``path`` in place, or as one standalone file at ``to``; returns what was written."""
    path = Path(path)
    with exclusive_writer(path):
        remove_temporaries(path.parent, f".{path.name}.tmp-")
        with FeatureCache(path) as cache:
            attrs = {k: v for k, v in cache.attrs.items() if k not in _REWRITTEN and not k.startswith("recipe.")}
            labels, splits = cache.labels, cache.splits
            records = cache.records()
            if to is not None:
                rows = [Row(r, int(labels[i]), str(splits[i]), FeatureSource(str(f), n)) for i, (r, (f, n)) in enumerate(zip(records, cache.sources()))]
                target = Path(to)
                _write(target.parent, write_cache, target, recipe=cache.recipe, feature_shape=cache.feature_shape,
                       class_names=cache.class_names, rows=rows, skipped=cache.skipped(), attrs=attrs)
                return target
            schema.shards_dir(path).mkdir(exist_ok=True)
            rows, table = [], []
            folder = path.parent.resolve()
            for start in range(0, len(cache), ROWS_PER_SHARD):
                stop = min(len(cache), start + ROWS_PER_SHARD)
                features = cache.features(np.arange(start, stop), dtype=cache.storage_dtype)
                shard = new_shard_path(path)
                _write(shard.parent, write_shard, shard, cache.recipe, features, records[start:stop], [])
                table.append((os.path.relpath(shard.resolve(), folder), stop - start, shard.stat().st_size, file_digest(shard)))
                rows += [Row(records[i], int(labels[i]), str(splits[i]), FeatureSource(str(shard), i - start)) for i in range(start, stop)]
            _write(path.parent, write_index, path, recipe=cache.recipe, feature_shape=cache.feature_shape,
                   class_names=cache.class_names, rows=rows, skipped=cache.skipped(), attrs=attrs, shards=table)
        collect_garbage(path, {folder / name for name, *_ in table})
        return path


def _write(folder: Path, action: Callable[..., None], *args: Any, **kwargs: Any) -> None:
    """Run one write into ``folder``, turning a full disk into the one-line error."""
    try:
        action(*args, **kwargs)
    except OSError as error:
        raise no_space(folder, 64 << 20, error) from None
