"""Segments: the index's per-row metadata in immutable files, so that a commit writes what changed.

An index of version 3 keeps its rows' paths, fingerprints, labels and splits in segment files
in the shards folder (``segment-<uuid>.h5``), each of up to :data:`SEGMENT_ROWS` rows sorted
by path; the index itself holds the class names, the skipped files, the tables of shards and
segments, and virtual datasets over both (so any HDF5 reader still sees ``paths``, ``labels``
or ``features`` as ordinary datasets, in storage order). A commit keeps every old segment whose
rows are all unchanged and writes the other rows as new segments; a new segment merges with
the one before it while that one is not at least twice its size, so a cache holds about
``N / SEGMENT_ROWS + log2 N`` segments and a row is rewritten about ``log2 N`` times in its life.

Every column is fixed-width, which virtual datasets need (variable-length strings cannot be
virtual): paths are UTF-8 padded to a power of two of bytes that fits the longest, and every
column is stored gzip level 1 after shuffling, which takes most of the padding back.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from features_cache import ownership, schema
from features_cache.atomic import atomic_h5, write_strings
from features_cache.records import UNKNOWN

SEGMENT_ROWS = 65_536  # rows of a full segment: what one changed row can make a commit rewrite
SEGMENT_ID = "segment_id"
SEGMENT_NAMES = "shard_names"  # per segment: the shards its rows are in, by file name (``row_shard`` indexes it)
SHORTEST_PATH_WIDTH = 64
HASH_WIDTH = 32  # a BLAKE2b-128 hex digest
SPLIT_WIDTH = 8
STAMP_COLUMNS = (schema.FILE_SIZE, schema.FILE_MTIME, schema.FILE_INODE, schema.FILE_CTIME)
# The columns the index shows as virtual datasets over its segments, and what they read where a segment is
# missing (strings read empty).
VIRTUAL_COLUMNS = {
    schema.PATHS: None, schema.CONTENT_HASH: None, schema.SPLIT: None, schema.LABELS: -1,
    **{column: UNKNOWN for column in STAMP_COLUMNS},
}
_GZIP = {"compression": "gzip", "compression_opts": 1, "shuffle": True}


def new_segment_path(cache_path: str | Path) -> Path:
    return schema.shards_dir(cache_path) / f"segment-{uuid.uuid4().hex}.h5"


def path_width(paths: Sequence[str]) -> int:
    """Bytes of the ``paths`` column: the smallest power of two (at least 64) that holds every path."""
    longest = max(max(map(len, paths), default=0), max((len(p.encode()) for p in paths if not p.isascii()), default=0))
    width = SHORTEST_PATH_WIDTH
    while width < longest:
        width *= 2
    return width


@dataclasses.dataclass(frozen=True)
class SegmentRef:
    """A segment as the index lists it: file, id, rows and the digest of what they say."""

    file: Path
    segment_id: str
    rows: int
    digest: str


@dataclasses.dataclass
class Columns:
    """The rows of one segment as arrays, in its order: what it stores and what the reader loads."""

    paths: list[str]
    content_hashes: list[str]
    splits: list[str]
    labels: np.ndarray
    stamps: np.ndarray  # (rows, 4) int64: size, mtime, inode, ctime
    shard_names: list[str]
    row_shard: np.ndarray  # into ``shard_names``
    row_index: np.ndarray

    def digest(self, class_names: Sequence[str]) -> str:
        return schema.rows_digest(self.paths, self.content_hashes, self.labels, self.splits, list(class_names),
                                  self.row_shard, self.row_index, self.shard_names)


def columns_of(rows: Sequence, shard_names: Sequence[str]) -> Columns:
    """``rows`` (``writer.Row``, already in path order) as columns; ``shard_names[i]`` names row i's shard."""
    local: dict[str, int] = {}
    row_shard = np.array([local.setdefault(name, len(local)) for name in shard_names], dtype=np.int32)
    return Columns(
        paths=[row.record.path for row in rows],
        content_hashes=[row.record.content_hash for row in rows],
        splits=[row.split for row in rows],
        labels=np.array([row.label for row in rows], dtype=np.int32),
        stamps=np.array([(r.record.stamp.file_size, r.record.stamp.file_mtime_ns, r.record.stamp.inode, r.record.stamp.ctime_ns)
                         for r in rows], dtype=np.int64).reshape(len(rows), 4),
        shard_names=list(local),
        row_shard=row_shard,
        row_index=np.array([row.source.index for row in rows], dtype=np.int64),
    )


def column_dtypes(width: int) -> dict[str, np.dtype]:
    """The stored type of every virtual column: the index's virtual datasets and every segment must agree."""
    return {
        schema.PATHS: h5py.string_dtype("utf-8", width), schema.CONTENT_HASH: h5py.string_dtype("utf-8", HASH_WIDTH),
        schema.SPLIT: h5py.string_dtype("utf-8", SPLIT_WIDTH), schema.LABELS: np.dtype(np.int32),
        **{column: np.dtype(np.int64) for column in STAMP_COLUMNS},
    }


def write_segment(path: Path, columns: Columns, class_names: Sequence[str], width: int, owner: ownership.Owner | None = None) -> SegmentRef:
    """Write one segment atomically (built in memory, one write, fsync, rename) and return how the index lists it."""
    segment_id, digest = uuid.uuid4().hex, columns.digest(class_names)
    data = {
        schema.PATHS: _fixed(columns.paths, width), schema.CONTENT_HASH: _fixed(columns.content_hashes, HASH_WIDTH),
        schema.SPLIT: _fixed(columns.splits, SPLIT_WIDTH), schema.LABELS: columns.labels,
        **{column: columns.stamps[:, i] for i, column in enumerate(STAMP_COLUMNS)},
        schema.ROW_SHARD: columns.row_shard, schema.ROW_INDEX: columns.row_index,
    }
    dtypes = {**column_dtypes(width), schema.ROW_SHARD: np.dtype(np.int32), schema.ROW_INDEX: np.dtype(np.int64)}
    chunk = (max(1, min(len(columns.paths), 16_384)),)
    with atomic_h5(path, "segment") as f:
        for name, values in data.items():
            dataset = f.create_dataset(name, shape=(len(values),), dtype=dtypes[name], chunks=chunk, **_GZIP)
            if len(values):  # the stored type itself as the memory type: UTF-8 bytes go in as they are
                dataset.id.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(values), mtype=dataset.id.get_type())
        write_strings(f, SEGMENT_NAMES, columns.shard_names)
        f.attrs[SEGMENT_ID] = segment_id
        f.attrs["rows_digest"] = digest
        f.attrs["schema_version"] = schema.INDEX_VERSION
        if owner is not None:
            owner.stamp(f.attrs)
    return SegmentRef(path, segment_id, len(columns.paths), digest)


def _fixed(values: Sequence[str], width: int) -> np.ndarray:
    return np.array([value.encode() for value in values], dtype=f"S{width}").reshape(len(values))


def read_segment(ref: SegmentRef, class_names: Sequence[str]) -> Columns:
    """Read a segment and check it is the one the index lists, whole; raise ``ValueError`` saying what is wrong."""
    try:
        with h5py.File(ref.file, "r") as f:
            if str(f.attrs.get(SEGMENT_ID, "")) != ref.segment_id:
                raise ValueError("not the segment the index lists (another file put in its place)")
            columns = Columns(
                paths=_strings(f[schema.PATHS]), content_hashes=_strings(f[schema.CONTENT_HASH]), splits=_strings(f[schema.SPLIT]),
                labels=f[schema.LABELS][()],
                stamps=np.stack([f[column][()] for column in STAMP_COLUMNS], axis=1).reshape(-1, 4),
                shard_names=[str(name) for name in f[SEGMENT_NAMES].asstr()[()]],
                row_shard=f[schema.ROW_SHARD][()], row_index=f[schema.ROW_INDEX][()],
            )
    except (OSError, KeyError, TypeError, RuntimeError, UnicodeDecodeError):
        raise ValueError("unreadable") from None
    if len(columns.paths) != ref.rows or columns.digest(class_names) != ref.digest:
        raise ValueError("its rows are not the rows the index lists (digest mismatch)")
    return columns


def _strings(dataset: h5py.Dataset) -> list[str]:
    return [value.decode() for value in dataset[()].tolist()]


def segment_files(cache_path: str | Path) -> list[Path]:
    """The files in the shards folder named like segments."""
    folder = schema.shards_dir(cache_path)
    if not folder.is_dir():
        return []
    return [path for path in folder.glob("segment-*.h5") if path.is_symlink() or path.is_file()]


def plan_segments(kept: list[tuple[SegmentRef, np.ndarray]], fresh: np.ndarray) -> list[tuple[SegmentRef | None, np.ndarray]]:
    """The index's segments after a commit: ``(kept segment or None for a new one, row positions)``.

    ``kept`` are old segments whose rows are all unchanged, with their positions in the new
    rows; ``fresh`` the positions of every other row. Fresh rows form new segments of up to
    :data:`SEGMENT_ROWS`; then, from the end, a segment not at least twice the size of the one
    after it absorbs it (when the two fit in one), which keeps the count logarithmic.
    """
    plan: list[tuple[SegmentRef | None, np.ndarray]] = list(kept)
    for start in range(0, len(fresh), SEGMENT_ROWS):
        plan.append((None, fresh[start : start + SEGMENT_ROWS]))
        while len(plan) >= 2 and len(plan[-2][1]) < 2 * len(plan[-1][1]) and len(plan[-2][1]) + len(plan[-1][1]) <= SEGMENT_ROWS:
            last = plan.pop()
            plan[-1] = (None, np.sort(np.concatenate([plan[-1][1], last[1]])))
    return plan
