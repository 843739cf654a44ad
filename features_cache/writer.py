"""Writing caches: always to a temporary file in the same folder, then an atomic rename.

A kill at any moment therefore leaves either the previous complete cache or the new
complete cache under the real name, never a half-written one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from features_cache import schema
from features_cache.errors import CacheError
from features_cache.records import FileRecord, SkippedFile

# Per-row bytes beside the features (path, hash, label, split, stamps; generous) and a fixed
# headroom for HDF5's own structures: what the free-space check asks for on top of the features.
METADATA_BYTES_PER_ROW = 256
HEADROOM = 256 << 10

STRING = h5py.string_dtype("utf-8")


@dataclasses.dataclass(frozen=True)
class FeatureSource:
    """Where a row's features can be read from: an HDF5 file and a row index in it."""

    file: str
    index: int


@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the cache to be written."""

    record: FileRecord
    label: int
    split: str
    source: FeatureSource


@contextlib.contextmanager
def atomic_h5(path: str | os.PathLike) -> Iterator[h5py.File]:
    """Yield an HDF5 file that appears at ``path`` only once it was closed and synced."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:  # the default, oldest file format: HDF5 1.8+ tools read it
            yield f
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` at ``path`` only once fully written and synced; a full disk is an ``OSError``, nothing left behind."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def check_free_space(folder: Path, needed: int) -> None:
    """Refuse before writing, not halfway: HDF5 that runs out of space mid-write can crash the process."""
    free = shutil.disk_usage(folder).free
    if free < needed:
        raise CacheError(
            f"{folder}: {needed / 1e6:.1f} MB needed to write the cache but {free / 1e6:.1f} MB free; free space in "
            f"{folder} and run the same command again (finished batches are kept)"
        )


def write_strings(group: h5py.Group, name: str, values: Sequence[str]) -> None:
    group.create_dataset(name, data=np.array(list(values), dtype=object), dtype=STRING)


def write_records(group: h5py.Group, records: Sequence[FileRecord]) -> None:
    """The per-row fingerprint datasets, in the order of ``records``."""
    write_strings(group, schema.PATHS, [r.path for r in records])
    write_strings(group, schema.CONTENT_HASH, [r.content_hash for r in records])
    group.create_dataset(schema.FILE_SIZE, data=np.array([r.stamp.file_size for r in records], dtype=np.int64))
    group.create_dataset(schema.FILE_MTIME, data=np.array([r.stamp.file_mtime_ns for r in records], dtype=np.int64))


def write_skipped(group: h5py.Group, skipped: Sequence[SkippedFile]) -> None:
    sub = group.create_group(schema.SKIPPED)
    write_strings(sub, schema.PATHS, [s.path for s in skipped])
    write_strings(sub, schema.REASONS, [s.reason for s in skipped])
    write_strings(sub, schema.DEPENDS_ON, [s.depends_on for s in skipped])
    sub.create_dataset(schema.FILE_SIZE, data=np.array([s.stamp.file_size for s in skipped], dtype=np.int64))
    sub.create_dataset(schema.FILE_MTIME, data=np.array([s.stamp.file_mtime_ns for s in skipped], dtype=np.int64))


class _OpenFiles:
    """A few source files kept open while rows are copied, most recently used first."""

    def __init__(self, limit: int = 32) -> None:
        self._files: OrderedDict[str, h5py.File] = OrderedDict()
        self._limit = limit

    def features(self, file: str) -> h5py.Dataset:
        if file in self._files:
            self._files.move_to_end(file)
        else:
            if len(self._files) >= self._limit:
                self._files.popitem(last=False)[1].close()
            self._files[file] = h5py.File(file, "r")
        return self._files[file][schema.FEATURES]

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()


def _contiguous_runs(rows: Sequence[Row]) -> Iterator[tuple[int, int, str, int]]:
    """Yield ``(first_row, n_rows, file, first_index)`` for runs that can be copied as one slice."""
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or not (
            rows[i].source.file == rows[start].source.file
            and rows[i].source.index == rows[start].source.index + (i - start)
        ):
            yield start, i - start, rows[start].source.file, rows[start].source.index
            start = i


def write_cache(
    path: str | os.PathLike,
    *,
    recipe: schema.Recipe,
    feature_shape: tuple[int, ...],
    class_names: Sequence[str],
    rows: Sequence[Row],
    skipped: Sequence[SkippedFile],
    attrs: dict[str, object],
) -> None:
    """Write a complete cache from rows whose features live in other HDF5 files.

    Rows are copied in slices of contiguous source rows, so memory stays at about one
    chunk whatever the number of images.
    """
    dtype = np.dtype(recipe.storage_dtype)
    per_chunk = schema.chunk_rows(feature_shape, dtype.itemsize)
    row_bytes = int(np.prod(feature_shape)) * dtype.itemsize + METADATA_BYTES_PER_ROW
    check_free_space(Path(path).resolve().parent, len(rows) * row_bytes + len(skipped) * METADATA_BYTES_PER_ROW + HEADROOM)
    sources = _OpenFiles()
    try:
        with atomic_h5(path) as f:
            features = f.create_dataset(
                schema.FEATURES,
                shape=(len(rows), *feature_shape),
                dtype=dtype,
                chunks=(min(per_chunk, max(1, len(rows))), *feature_shape),
            )
            for first, count, file, index in _contiguous_runs(rows):
                for offset in range(0, count, per_chunk):
                    n = min(per_chunk, count - offset)
                    block = sources.features(file)[index + offset : index + offset + n]
                    features[first + offset : first + offset + n] = block.astype(dtype, copy=False)
            f.create_dataset(schema.LABELS, data=np.array([r.label for r in rows], dtype=np.int32))
            write_strings(f, schema.CLASS_NAMES, class_names)
            write_strings(f, schema.SPLIT, [r.split for r in rows])
            write_records(f, [r.record for r in rows])
            write_skipped(f, skipped)
            f.attrs.update(recipe.to_attrs())
            f.attrs["identity"] = recipe.fingerprint()
            f.attrs["schema_version"] = schema.SCHEMA_VERSION
            f.attrs["written_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
            f.attrs.update(attrs)
            f.attrs["complete"] = np.int8(1)  # not a numpy bool: HDF5 1.10 tools cannot read those
    finally:
        sources.close()
