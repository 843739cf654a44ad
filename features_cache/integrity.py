"""What every read checks: that a shard is the one the index listed and each row is the row written.

Fletcher32 protects each chunk's bytes but not which chunk is which row, and the index's
size check does not tell two shards of equal size apart. So each shard carries a random id
the index's shard table repeats (checked when the cache is opened), and a per-row checksum
of its feature bytes (checked on every read). Files written before either existed carry
neither and are read with the older checks.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import h5py
import numpy as np

from features_cache import schema
from features_cache.errors import CacheError


def new_id() -> str:
    return uuid.uuid4().hex


def row_checksums(features: np.ndarray) -> np.ndarray:
    """Per row, the sum modulo 2**64 of its stored bytes read as 64-bit words (narrower words
    when a row's length is not a multiple of 8).

    It tells rows apart at memory speed (a full read costs a few percent more); a flipped
    bit changes it too, though fletcher32 already catches those per chunk.
    """
    features = np.ascontiguousarray(features)
    row_bytes = features.dtype.itemsize * int(np.prod(features.shape[1:], dtype=np.int64))
    width = next(w for w in (8, 4, 2, 1) if row_bytes % w == 0)
    words = features.reshape(-1).view(np.uint8).view(f"<u{width}")
    return words.reshape(len(features), row_bytes // width).sum(axis=1, dtype=np.uint64)


def stored_id(f: h5py.File) -> str:
    """The shard id a file carries, or "" for files written before ids existed."""
    return str(f.attrs.get(schema.SHARD_ID, ""))


def stored_checksums(f: h5py.File) -> np.ndarray | None:
    """The file's per-row checksums, or None for files written before they existed."""
    return f[schema.ROW_CHECKSUM][()] if schema.ROW_CHECKSUM in f else None


def check_rows(file: Path, owner: Path, features: np.ndarray, expected: np.ndarray | None, start: int) -> None:
    """Raise naming ``file`` when rows ``start:`` of it are not the rows written there."""
    if expected is None:
        return
    wrong = np.flatnonzero(row_checksums(features) != expected[start : start + len(features)])
    if len(expected) < start + len(features) or len(wrong):
        row = start + (int(wrong[0]) if len(wrong) else 0)
        raise CacheError(
            f"{file}: row {row} does not hold the features written there (row checksum mismatch), in {owner}; "
            f"run `pipeline verify {owner}` to list damage, then `pipeline extract` again"
        )
