"""Checking a cache end to end: every shard's size, digest and feature checksums."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from features_cache import schema
from features_cache.reader import FeatureCache
from features_cache.shards import file_digest


def damage(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(file, what is wrong)`` per damaged part of the cache at ``path``; empty when every byte checks out.

    Opening the cache checks the index and that every shard exists with its recorded
    size; this also compares each shard's digest and reads every feature chunk, so
    HDF5 verifies the fletcher32 checksums.
    """
    with FeatureCache(path) as cache:
        if cache.version == schema.STANDALONE_VERSION:
            return _unreadable(cache.path)
        problems = []
        for shard, digest in zip(cache.shard_files, cache.shard_digests):
            if file_digest(shard) != digest:
                problems.append((shard, "contents changed since it was written (digest mismatch)"))
            if not problems or problems[-1][0] != shard:
                problems.extend(_unreadable(shard))
        return problems


def _unreadable(file: Path) -> list[tuple[Path, str]]:
    try:
        with h5py.File(file, "r") as f:
            features = f[schema.FEATURES]
            for start in range(0, len(features), 4096):
                features[start : start + 4096]
    except (OSError, KeyError) as error:
        return [(file, f"features cannot be read ({str(error).splitlines()[0]})")]
    return []
