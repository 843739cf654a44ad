"""Checking a cache end to end: every shard's size, id, digest, feature checksums and row checksums.

A standalone file (``compact --to``) is checked the same way as a shard: every chunk's
fletcher32 and every row's checksum (files written before these existed are only read).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from features_cache import halves, integrity, schema
from features_cache.errors import CacheError
from features_cache.reader import FeatureCache
from features_cache.shards import file_digest


def damage(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """``(file, what is wrong)`` per damaged part of the cache at ``path``; empty when every byte checks out.

    Opening the cache checks the index and that every shard exists with its recorded
    size and id; this also compares each shard's digest and reads every feature chunk, so
    HDF5 verifies the fletcher32 checksums, and compares every row with its checksum.
    """
    with FeatureCache(path) as cache:
        if cache.version == schema.STANDALONE_VERSION:
            return _unreadable(cache.path)
        problems = []
        for shard, digest in zip(cache.shard_files, cache.shard_digests):
            found = _unreadable(shard)
            if file_digest(shard) != digest:  # and which rows, or what HDF5 says, where a read tells
                found = [(shard, "; ".join(["contents changed since it was written (digest mismatch)", *(why for _, why in found)]))]
            problems.extend(found)
        return problems


def _unreadable(file: Path) -> list[tuple[Path, str]]:
    try:
        with h5py.File(file, "r") as f:
            features, sums = f[schema.FEATURES], integrity.stored_checksums(f)
            for start in range(0, len(features), 4096):
                block = features[start : start + 4096]
                integrity.check_rows(file, file, block, sums, start)
                if not (halves.finite_halves(block) if block.dtype == np.float16 else np.isfinite(block).all()):
                    row = start + int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0])
                    return [(file, f"row {row} reads as NaN or infinity (a missing or damaged row, never a feature)")]
    except (OSError, KeyError) as error:
        return [(file, f"features cannot be read ({str(error).splitlines()[0]})")]
    except CacheError as error:
        return [(file, str(error).split(": ", 1)[1].split(", in ", 1)[0])]
    return []
