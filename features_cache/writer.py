"""Writing caches: always to a temporary file in the same folder, then an atomic rename.

A kill at any moment therefore leaves either the previous complete cache or the new
complete cache under the real name, never a half-written one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from features_cache import integrity, ownership, schema, segments
from features_cache.atomic import atomic_h5, temporary_path, write_strings
from features_cache.records import FileRecord, FileStamp, SkippedFile

if TYPE_CHECKING:
    from features_cache.reader import FeatureCache



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


def write_stamps(group: h5py.Group, stamps: Sequence[FileStamp]) -> None:
    """One int64 dataset per stamp field: size, mtime, inode, ctime."""
    for name, field in _STAMP_FIELDS:
        group.create_dataset(name, data=np.array([getattr(stamp, field) for stamp in stamps], dtype=np.int64))


_STAMP_FIELDS = (
    (schema.FILE_SIZE, "file_size"), (schema.FILE_MTIME, "file_mtime_ns"),
    (schema.FILE_INODE, "inode"), (schema.FILE_CTIME, "ctime_ns"),
)


def write_records(group: h5py.Group, records: Sequence[FileRecord]) -> None:
    """The per-row fingerprint datasets, in the order of ``records``."""
    write_strings(group, schema.PATHS, [r.path for r in records])
    write_strings(group, schema.CONTENT_HASH, [r.content_hash for r in records])
    write_stamps(group, [r.stamp for r in records])


def write_skipped(group: h5py.Group, skipped: Sequence[SkippedFile]) -> None:
    sub = group.create_group(schema.SKIPPED)
    write_strings(sub, schema.PATHS, [s.path for s in skipped])
    write_strings(sub, schema.REASONS, [s.reason for s in skipped])
    write_strings(sub, schema.DEPENDS_ON, [s.depends_on for s in skipped])
    write_stamps(sub, [s.stamp for s in skipped])


class OpenFiles:
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


def _common(f: h5py.File, recipe: schema.Recipe, class_names: Sequence[str], rows: Sequence[Row], skipped: Sequence[SkippedFile], attrs: dict[str, object]) -> None:
    """Everything but the features of a standalone file: the per-row datasets and what the index has too."""
    f.create_dataset(schema.LABELS, data=np.array([r.label for r in rows], dtype=np.int32))
    write_strings(f, schema.SPLIT, [r.split for r in rows])
    write_records(f, [r.record for r in rows])
    _header(f, recipe, class_names, skipped, attrs)


def _header(f: h5py.File, recipe: schema.Recipe, class_names: Sequence[str], skipped: Sequence[SkippedFile], attrs: dict[str, object]) -> None:
    """What an index and a standalone file both hold besides rows: class names, skips, the recipe and attributes."""
    write_strings(f, schema.CLASS_NAMES, class_names)
    write_skipped(f, skipped)
    f.attrs.update(recipe.to_attrs())
    f.attrs["identity"] = recipe.fingerprint()
    f.attrs["written_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    f.attrs.update(attrs)


def write_index(
    path: str | os.PathLike,
    *,
    recipe: schema.Recipe,
    feature_shape: tuple[int, ...],
    class_names: Sequence[str],
    rows: Sequence[Row],
    skipped: Sequence[SkippedFile],
    attrs: dict[str, object],
    shards: Sequence[tuple[str, int, int, str, str]],
    previous: FeatureCache | None = None,
    owner: ownership.Owner | None = None,
) -> list[Path]:
    """Write the index: new segments for the rows ``previous`` has no unchanged segment of, then
    the index itself (tables, class names, skips and the virtual datasets); returns every
    segment file it lists (for garbage collection).

    ``shards`` lists ``(file relative to the index's folder, rows, bytes, digest, id)``; every
    row's source file must be one of them. A commit adding 1% of rows to a large cache writes
    about 1% of its row metadata, plus an index of the size of its shard and segment tables.
    ``owner`` is the cache's identity at this commit: by default the next generation of ``previous``'s
    (a new identity without one).
    """
    path = Path(path)
    if owner is None:
        owner = ownership.Owner.after(previous.attrs) if previous is not None else ownership.Owner.new()
    number = {name: i for i, (name, *_rest) in enumerate(shards)}
    folder = path.parent.resolve()
    relative: dict[str, str] = {}
    for file in dict.fromkeys(r.source.file for r in rows):
        relative[file] = os.path.relpath(Path(file).resolve(), folder)
    row_shard = np.array([number[relative[r.source.file]] for r in rows], dtype=np.int32)
    row_index = np.array([r.source.index for r in rows], dtype=np.int64)
    name_of = {file: Path(name).name for file, name in relative.items()}
    names = [name_of[r.source.file] for r in rows]
    width = segments.path_width([r.record.path for r in rows])
    kept, fresh = _unchanged_segments(previous, rows, row_shard, row_index, shards, class_names, width)
    schema.shards_dir(path).mkdir(exist_ok=True)
    listed: list[tuple[segments.SegmentRef, np.ndarray]] = []
    for ref, positions in segments.plan_segments(kept, fresh):
        if ref is None:
            columns = segments.columns_of([rows[i] for i in positions], [names[i] for i in positions])
            ref = segments.write_segment(segments.new_segment_path(path), columns, class_names, width, owner)
        listed.append((ref, positions))
    storage = np.concatenate([positions for _, positions in listed]).astype(np.int64) if listed else np.zeros(0, np.int64)
    segment_table = [(os.path.relpath(ref.file.resolve(), folder), ref.rows, ref.digest, ref.segment_id) for ref, _ in listed]
    with atomic_h5(path, "index") as f:
        layout = virtual_layout(shards, row_shard[storage], row_index[storage], feature_shape, np.dtype(recipe.storage_dtype))
        write_virtual(f, schema.FEATURES, layout)
        for column, dtype in segments.column_dtypes(width).items():
            f.create_virtual_dataset(column, _segment_layout(segment_table, column, dtype), fillvalue=segments.VIRTUAL_COLUMNS[column])
        _header(f, recipe, class_names, skipped, attrs)
        _write_table(f.create_group(schema.SHARDS), shards)
        table = f.create_group(schema.SEGMENTS)
        write_strings(table, schema.SHARD_FILES, [s[0] for s in segment_table])
        table.create_dataset(schema.SHARD_ROWS, data=np.array([s[1] for s in segment_table], dtype=np.int64))
        write_strings(table, schema.SHARD_DIGESTS, [s[2] for s in segment_table])
        write_strings(table, schema.SHARD_IDS, [s[3] for s in segment_table])
        f.attrs["index_digest"] = schema.index_digest(list(class_names), shards, segment_table)
        f.attrs["schema_version"] = schema.INDEX_VERSION
        owner.stamp(f.attrs)
        f.attrs["complete"] = np.int8(1)
    return [ref.file.resolve() for ref, _ in listed]


def _write_table(table: h5py.Group, shards: Sequence[tuple[str, int, int, str, str]]) -> None:
    write_strings(table, schema.SHARD_FILES, [s[0] for s in shards])
    table.create_dataset(schema.SHARD_ROWS, data=np.array([s[1] for s in shards], dtype=np.int64))
    table.create_dataset(schema.SHARD_SIZES, data=np.array([s[2] for s in shards], dtype=np.int64))
    write_strings(table, schema.SHARD_DIGESTS, [s[3] for s in shards])
    write_strings(table, schema.SHARD_IDS, [s[4] for s in shards])


def _segment_layout(table: Sequence[tuple[str, int, str, str]], column: str, dtype: np.dtype) -> h5py.VirtualLayout:
    """One column of every segment, end to end, as one virtual dataset of the index."""
    layout = h5py.VirtualLayout(shape=(sum(rows for _, rows, *_ in table),), dtype=dtype)
    start = 0
    for name, rows, *_ in table:
        if rows:
            layout[start : start + rows] = h5py.VirtualSource(name, column, shape=(rows,), dtype=dtype)
        start += rows
    return layout


def _unchanged_segments(
    previous: FeatureCache | None, rows: Sequence[Row], row_shard: np.ndarray, row_index: np.ndarray,
    shards: Sequence[tuple], class_names: Sequence[str], width: int,
) -> tuple[list[tuple[segments.SegmentRef, np.ndarray]], np.ndarray]:
    """The old index's segments whose every row is in ``rows`` exactly as it says (path, fingerprints,
    label, split, shard and row), with their positions in ``rows``; and the positions of all other rows.

    Nothing is kept when the class names or the paths' width changed (every label or path would differ).
    Old rows are found among the new by the paths' own (cached) string hashes through a sorted array,
    then compared column by column, so a row costs well under a microsecond and no tuple."""
    everything = np.arange(len(rows), dtype=np.int64)
    if (previous is None or not len(rows) or previous.version != schema.INDEX_VERSION
            or previous.class_names != list(class_names) or previous.path_width != width):
        return [], everything
    old_paths, (old_hashes, old_stamps) = previous.paths, previous.content_columns()
    new_paths = [row.record.path for row in rows]
    at = _positions(new_paths, old_paths)
    where = at.tolist()
    same = at >= 0
    for new, old in ((new_paths, old_paths), ([row.record.content_hash for row in rows], old_hashes),
                     ([row.split for row in rows], list(previous.splits))):
        same &= np.fromiter((new[i] == value for i, value in zip(where, old)), dtype=bool, count=len(old))
    stamps = [row.record.stamp for row in rows]
    for k, field in enumerate(("file_size", "file_mtime_ns", "inode", "ctime_ns")):
        same &= np.fromiter((getattr(s, field) for s in stamps), dtype=np.int64, count=len(rows))[at] == old_stamps[:, k]
    same &= np.fromiter((row.label for row in rows), dtype=np.int64, count=len(rows))[at] == previous.labels
    number = {Path(name).name: k for k, (name, *_rest) in enumerate(shards)}
    renumbered = np.array([number.get(file.name, -1) for file in previous.shard_files], dtype=np.int64)
    same &= (row_shard[at] == renumbered[previous.row_shards]) & (row_index[at] == previous.row_indices)
    covered = np.zeros(len(rows), dtype=bool)
    kept = []
    for ref, logical in previous.segment_rows():
        if same[logical].all():
            covered[at[logical]] = True
            kept.append((ref, at[logical]))
    return kept, everything[~covered]


def _positions(new: list[str], old: list[str]) -> np.ndarray:
    """Per path of ``old``, its position in ``new`` (paths are unique in each), or -1 where it is
    not there; where two new paths share a string hash a dict does it, which costs more."""
    keys = np.fromiter(map(hash, new), dtype=np.int64, count=len(new))
    wanted = np.fromiter(map(hash, old), dtype=np.int64, count=len(old))
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    if len(new) > 1 and (ordered[1:] == ordered[:-1]).any():
        index = {path: i for i, path in enumerate(new)}
        return np.array([index.get(path, -1) for path in old], dtype=np.int64)
    if not len(new):
        return np.full(len(old), -1, dtype=np.int64)
    found = np.searchsorted(ordered, wanted).clip(0, len(new) - 1)
    return np.where(ordered[found] == wanted, order[found], -1)  # a hash match with another path fails the path check


def virtual_layout(
    shards: Sequence[tuple], row_shard: np.ndarray, row_index: np.ndarray, row_shape: tuple[int, ...], dtype: np.dtype,
    dataset: str = schema.FEATURES,
) -> h5py.VirtualLayout:
    """The index's view of one per-row shard dataset (``features``, or any other of the same
    row layout): one mapping per run of consecutive rows of one shard, found by the shard's
    path relative to the index's folder (which HDF5 resolves from the index's own folder)."""
    layout = h5py.VirtualLayout(shape=(len(row_shard), *row_shape), dtype=dtype)
    breaks = np.flatnonzero((np.diff(row_shard) != 0) | (np.diff(row_index) != 1)) + 1
    starts = np.concatenate([[0], breaks]).astype(np.int64) if len(row_shard) else np.zeros(0, np.int64)
    stops = np.concatenate([breaks, [len(row_shard)]]).astype(np.int64) if len(row_shard) else np.zeros(0, np.int64)
    for start, stop in zip(starts.tolist(), stops.tolist()):
        name, count = shards[row_shard[start]][0], shards[row_shard[start]][1]
        source = h5py.VirtualSource(name, dataset, shape=(count, *row_shape), dtype=dtype)
        first = int(row_index[start])
        layout[start:stop] = source[first : first + (stop - start)]
    return layout


def write_virtual(f: h5py.File, name: str, layout: h5py.VirtualLayout) -> None:
    """A virtual dataset whose rows read as NaN where a shard cannot be found (a missing
    shard, a moved folder): any HDF5 reader then sees missing rows, never zeros."""
    fill = np.nan if np.dtype(layout.dtype).kind == "f" else 0
    f.create_virtual_dataset(name, layout, fillvalue=fill)


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
    """Write a standalone single-file cache (for sharing) from rows in other HDF5 files.

    Rows are copied in slices of contiguous source rows, so memory stays at about one
    chunk whatever the number of images. The file carries a shard's protection: fletcher32
    per chunk, a checksum per row and an id. Its whole size is reserved on disk first, so a
    full disk is one ``OSError`` before HDF5 writes anything (HDF5 failing mid-flush crashes).
    """
    dtype = np.dtype(recipe.storage_dtype)
    per_chunk = schema.chunk_rows(feature_shape, dtype.itemsize)
    sources = OpenFiles()
    sums = np.zeros(len(rows), dtype=np.uint64)
    try:
        with reserved(path, standalone_bytes(feature_shape, dtype, rows)), atomic_h5(path, "standalone", in_memory=False) as f:
            features = f.create_dataset(
                schema.FEATURES,
                shape=(len(rows), *feature_shape),
                dtype=dtype,
                chunks=(min(per_chunk, max(1, len(rows))), *feature_shape),
                fletcher32=True,
            )
            for first, count, file, index in _contiguous_runs(rows):
                for offset in range(0, count, per_chunk):
                    n = min(per_chunk, count - offset)
                    block = sources.features(file)[index + offset : index + offset + n].astype(dtype, copy=False)
                    features[first + offset : first + offset + n] = block
                    sums[first + offset : first + offset + n] = integrity.row_checksums(block)
            f.create_dataset(schema.ROW_CHECKSUM, data=sums)
            f.attrs[schema.SHARD_ID] = integrity.new_id()
            _common(f, recipe, class_names, rows, skipped, attrs)
            f.attrs["schema_version"] = schema.STANDALONE_VERSION
            f.attrs["complete"] = np.int8(1)
    finally:
        sources.close()


def standalone_bytes(feature_shape: tuple[int, ...], dtype: np.dtype, rows: Sequence[Row]) -> int:
    """An upper bound on a standalone file's size: the features, about 300 bytes of metadata a row
    plus its path (stored twice over by HDF5's heaps at worst), and 1 MiB for the rest."""
    row_bytes = int(np.prod(feature_shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    return len(rows) * (row_bytes + 300) + 2 * sum(len(r.record.path.encode()) for r in rows) + (1 << 20)


@contextlib.contextmanager
def reserved(path: str | os.PathLike, size: int) -> Iterator[None]:
    """Make sure ``size`` bytes can be written beside ``path``: allocate them, then free them just before the write.

    Raises the ``OSError`` (ENOSPC) of the allocation; a write racing another writer for the
    space can still fail, but no longer in the common case of a disk that is simply too small.
    """
    hold = temporary_path(Path(path), ".reserve")
    try:
        descriptor = os.open(hold, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.posix_fallocate(descriptor, 0, max(1, size))
        finally:
            os.close(descriptor)
    finally:
        hold.unlink(missing_ok=True)
    yield
