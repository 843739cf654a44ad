"""Reading caches: validated on open, features streamed in blocks or loaded when they fit."""

from __future__ import annotations

import os
import resource
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from features_cache import halves, integrity, ownership, schema
from features_cache.errors import CacheError, MissingShards
from features_cache.records import UNKNOWN, FileRecord, FileStamp, SkippedFile
from features_cache.segments import Columns, SegmentRef, read_segment


class FeatureCache:
    """A finished feature cache, opened read-only.

    Opening refuses files that are missing, not HDF5, of another schema version,
    not marked complete, or that an interrupted ``extract`` run is still filling. It opens
    every shard the index lists and checks its size and id, so the reader keeps its snapshot:
    a ``compact`` or ``extract`` that deletes those shards later cannot take them away (POSIX
    keeps an unlinked file readable while it is open); an open that a commit overtakes (a file
    the old index listed is already collected) opens the new index instead. Every read checks
    each row's checksum.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise CacheError(f"{self.path}: no such cache; create it with `python -m pipeline extract DATA --cache {self.path}`")
        if self.path.is_dir():
            made = Path("cache") / f"{self.path.resolve().name or 'features'}.h5"
            raise CacheError(
                f"{self.path}: is a folder, not a feature cache; make a cache of its images with "
                f"`python -m pipeline extract {self.path} --cache {made}` and pass {made}"
            )
        for attempt in range(_RETRIES):
            opened = _stamp(self.path)
            try:
                self._open_file()
                return
            except CacheError:
                # a commit replaced the index while it was being opened and collected files the old one
                # listed: read the new one (each retry means another commit finished meanwhile)
                if attempt + 1 == _RETRIES or _stamp(self.path) == opened:
                    raise

    def _open_file(self) -> None:
        self._shards: list[h5py.File] = []
        self._checksums: list[np.ndarray | None] = []
        try:
            self._file = h5py.File(self.path, "r")
        except OSError:
            if not self.path.exists():
                raise CacheError(f"{self.path}: no such cache; create it with `python -m pipeline extract DATA --cache {self.path}`") from None
            raise CacheError(f"{self.path}: not a readable HDF5 feature cache; run `pipeline extract` again to rebuild it from its shards, or with --force to start over") from None
        try:
            self._open()
        except (KeyError, OSError, ValueError, TypeError, RuntimeError):
            self.close()
            raise CacheError(f"{self.path}: damaged feature cache index; run `pipeline extract` again to rebuild it from its shards, or with --force to start over") from None
        except CacheError:
            self.close()
            raise

    def _open(self) -> None:
        attrs = self._file.attrs
        if int(attrs.get("schema_version", 0)) not in schema.READABLE_VERSIONS or not attrs.get("complete", False):
            raise CacheError(f"{self.path}: not a complete feature cache of schema version {schema.INDEX_VERSION}; rebuild it with `pipeline extract --force`")
        self.version = int(attrs["schema_version"])
        self.recipe = schema.Recipe.from_attrs(attrs)
        self.identity = str(attrs["identity"])
        self.owner = ownership.of_attrs(attrs)
        self.attrs = {key: (value.item() if hasattr(value, "item") else value) for key, value in attrs.items()}
        self.class_names = [str(name) for name in self._file[schema.CLASS_NAMES].asstr()[()]]
        self._features = self._file[schema.FEATURES]
        self.relocated = False
        self.segment_files: list[Path] = []
        self._segments: list[tuple[SegmentRef, np.ndarray]] = []
        self._columns: tuple[list[str], np.ndarray] | None = None
        if self.version == schema.INDEX_VERSION:
            self._open_table()
            self._open_shards()
            self._open_segments()
            return
        self.labels = self._file[schema.LABELS][()].astype(np.int64)
        self.paths = [str(p) for p in self._file[schema.PATHS].asstr()[()]]
        self.splits = np.array([str(s) for s in self._file[schema.SPLIT].asstr()[()]], dtype=object)
        if self.version == schema.STANDALONE_VERSION:
            self.shard_files = [self.path]
            self._row_shard = np.zeros(len(self.paths), dtype=np.int32)
            self._row_index = np.arange(len(self.paths), dtype=np.int64)
            self._shards, self._checksums = [self._file], [integrity.stored_checksums(self._file)]
        else:
            self._open_table()
            self._row_shard = self._file[schema.ROW_SHARD][()]
            self._row_index = self._file[schema.ROW_INDEX][()]
            expected = schema.rows_digest(
                self.paths, [r.content_hash for r in self.records()], self.labels, list(self.splits), self.class_names,
                self._row_shard, self._row_index, self.recorded_files,
            )
            if str(attrs.get("rows_digest", "")) != expected:
                raise ValueError("rows digest")
            if len(self._row_shard) != len(self.paths) or len(self._row_index) != len(self.paths):
                raise ValueError("row table length")
            self._open_shards()

    def _open_table(self) -> None:
        """The shard table, and where its shards are now."""
        table = self._file[schema.SHARDS]
        self.recorded_files = [str(name) for name in table[schema.SHARD_FILES].asstr()[()]]
        self.shard_files, self.relocated = locate_shards(self.path, self.recorded_files)
        self.shard_rows = [int(n) for n in table[schema.SHARD_ROWS][()]]
        self.shard_sizes = [int(n) for n in table[schema.SHARD_SIZES][()]]
        self.shard_digests = [str(d) for d in table[schema.SHARD_DIGESTS].asstr()[()]]
        ids = table[schema.SHARD_IDS].asstr()[()] if schema.SHARD_IDS in table else [""] * len(self.shard_files)
        self.shard_ids = [str(i) for i in ids]

    def _open_segments(self) -> None:
        """Read every segment the index lists, check each against the index's table, and list the
        rows sorted by path (the order ``extract`` writes them in, whatever the commits were)."""
        table = self._file[schema.SEGMENTS]
        recorded = [str(name) for name in table[schema.SHARD_FILES].asstr()[()]]
        counts = [int(n) for n in table[schema.SHARD_ROWS][()]]
        digests = [str(d) for d in table[schema.SHARD_DIGESTS].asstr()[()]]
        ids = [str(i) for i in table[schema.SHARD_IDS].asstr()[()]]
        shards = list(zip(self.recorded_files, self.shard_rows, self.shard_sizes, self.shard_digests, self.shard_ids))
        if str(self.attrs.get("index_digest", "")) != schema.index_digest(self.class_names, shards, list(zip(recorded, counts, digests, ids))):
            raise ValueError("index digest")
        self.segment_files, moved = locate_shards(self.path, recorded)
        self.relocated = self.relocated or moved
        refs = [SegmentRef(file, segment_id, count, digest) for file, count, digest, segment_id in zip(self.segment_files, counts, digests, ids)]
        shard_number = {file.name: k for k, file in enumerate(self.shard_files)}
        paths: list[str] = []
        hashes: list[str] = []
        splits: list[str] = []
        labels, stamps, row_shard, row_index = [], [], [], []
        for ref in refs:
            columns = self._read_segment(ref)
            paths += columns.paths
            hashes += columns.content_hashes
            splits += columns.splits
            labels.append(columns.labels)
            stamps.append(columns.stamps)
            row_shard.append(np.array([shard_number[name] for name in columns.shard_names], dtype=np.int32)[columns.row_shard]
                             if len(columns.paths) else np.zeros(0, np.int32))
            row_index.append(columns.row_index)
        joined = [np.concatenate(parts) if parts else np.zeros((0, 4) if parts is stamps else 0, np.int64)
                  for parts in (labels, stamps, row_shard, row_index)]
        order = np.arange(len(paths), dtype=np.int64)
        if any(a > b for a, b in zip(paths, paths[1:])):
            order = np.array(sorted(range(len(paths)), key=paths.__getitem__), dtype=np.int64)
        self.paths = [paths[i] for i in order]
        if any(a == b for a, b in zip(self.paths, self.paths[1:])):
            raise ValueError("a path in two segments")
        self.labels = joined[0][order].astype(np.int64)
        if len(self.labels) and not (self.labels.min() >= 0 and self.labels.max() < len(self.class_names)):
            raise ValueError("labels")
        self.splits = np.array([splits[i] for i in order], dtype=object)
        self._columns = ([hashes[i] for i in order], joined[1].reshape(-1, 4)[order])
        self._row_shard, self._row_index = joined[2][order], joined[3][order]
        if len(order) and not ((self._row_index >= 0) & (self._row_index < np.array(self.shard_rows, dtype=np.int64)[self._row_shard])).all():
            raise ValueError("row table")
        logical = np.empty(len(order), dtype=np.int64)
        logical[order] = np.arange(len(order))
        starts = np.cumsum([0, *counts])
        self._segments = [(ref, logical[start:stop]) for ref, start, stop in zip(refs, starts, starts[1:])]

    def _read_segment(self, ref: SegmentRef) -> Columns:
        if not ref.file.is_file():
            raise CacheError(
                f"{ref.file}: segment of {self.path} (the rows' paths and labels) is missing; "
                "run `pipeline extract` again to rebuild the index from its shards"
            )
        try:
            return read_segment(ref, self.class_names)
        except ValueError as why:
            raise CacheError(f"{ref.file}: segment of {self.path} is damaged ({why}); run `pipeline extract` again to rebuild the index from its shards") from None

    def content_columns(self) -> tuple[list[str], np.ndarray]:
        """Per row, the content hash and the stamp as ``(rows, 4)`` int64 (size, mtime, inode, ctime): records without the objects."""
        if self._columns is not None:
            return self._columns
        records = self.records()
        stamps = [(r.stamp.file_size, r.stamp.file_mtime_ns, r.stamp.inode, r.stamp.ctime_ns) for r in records]
        return [r.content_hash for r in records], np.array(stamps, dtype=np.int64).reshape(len(records), 4)

    def storage_order(self) -> np.ndarray:
        """Per row of the index's datasets as stored (what plain HDF5 readers see), its row in this reader's order."""
        if not self._segments:
            return np.arange(len(self), dtype=np.int64)
        return np.concatenate([positions for _, positions in self._segments]).astype(np.int64)

    def segment_rows(self) -> list[tuple[SegmentRef, np.ndarray]]:
        """Per segment (version 3), its rows' positions in this reader's order: what a commit may keep."""
        return list(self._segments)

    @property
    def path_width(self) -> int:
        """Bytes of the segments' ``paths`` column (version 3), which new segments must share to keep old ones."""
        return int(self._file[schema.PATHS].dtype.itemsize) if self.version == schema.INDEX_VERSION else 0

    @property
    def row_shards(self) -> np.ndarray:
        """Per row, the shard (in ``shard_files``) its features are in."""
        return self._row_shard

    @property
    def row_indices(self) -> np.ndarray:
        """Per row, its row within that shard."""
        return self._row_index

    def _open_shards(self) -> None:
        """Open every listed shard now, checking its size and, where the index recorded one, its id."""
        for folder in sorted({file.parent for file in self.shard_files}):
            if not folder.is_dir():
                clear = f"move the file {folder.name} away (it is not part of the cache), then " if folder.exists() else ""
                raise MissingShards(
                    f"{folder}: the shards folder of {self.path} is {'not a folder' if folder.exists() else 'missing'}; "
                    f"{clear}copy the folder {folder.name} from where the index came from, beside it (the two move together), "
                    "or run `pipeline extract --force` to extract every image again"
                )
        _allow_open_files(len(self.shard_files))
        for shard, size, shard_id in zip(self.shard_files, self.shard_sizes, self.shard_ids):
            if not shard.is_file() or shard.stat().st_size != size:
                raise CacheError(f"{shard}: shard of {self.path} is missing or damaged; run `pipeline extract` again to extract its images again")
            try:
                handle = h5py.File(shard, "r")
            except OSError:
                raise CacheError(f"{shard}: shard of {self.path} is not readable HDF5; run `pipeline extract` again to extract its images again") from None
            self._shards.append(handle)
            if shard_id and integrity.stored_id(handle) != shard_id:
                raise CacheError(
                    f"{shard}: not the shard {self.path} lists (another file of the same size put in its place); "
                    "run `pipeline extract` again to extract its images again"
                )
            self._checksums.append(integrity.stored_checksums(handle))

    def sources(self) -> list[tuple[Path, int]]:
        """Per row, the file and row its features are stored at."""
        return [(self.shard_files[s], int(i)) for s, i in zip(self._row_shard, self._row_index)]

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for handle in self._shards:
            if handle is not self._file:
                handle.close()
        self._shards.clear()
        self._file.close()

    def _read(self, shard: int, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of one shard; HDF5 checks each chunk's fletcher32 checksum, and
        each row is compared with its checksum, so a chunk mapped to the wrong rows is an error."""
        file = self.shard_files[shard]
        try:
            block = self._shards[shard][schema.FEATURES][start:stop]
        except (OSError, KeyError, RuntimeError):
            raise CacheError(f"{file}: damaged shard of {self.path} (checksum or read error); run `pipeline verify {self.path}` to list damage, then `pipeline extract` again") from None
        integrity.check_rows(file, self.path, block, self._checksums[shard], start)
        return block

    def _store(self, shard: int, start: int, block: np.ndarray, target: np.ndarray) -> None:
        """Put a shard's rows into ``target`` (converting float16 to float32 at memory speed); a
        NaN or infinite value is a missing or damaged row, an error naming the shard, never data."""
        if block.dtype == np.float16 and target.dtype == np.float32 and target.flags.c_contiguous:
            finite = halves.widen(block, target)
        else:
            target[...] = block
            finite = halves.finite_halves(block) if block.dtype == np.float16 else _finite(block)
        if not finite:
            row = start + int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(axis=1))[0])
            raise CacheError(
                f"{self.shard_files[shard]}: row {row} reads as NaN or infinity (a missing or damaged row), in {self.path}; "
                f"run `pipeline verify --repair {self.path}`, then `pipeline extract` again to extract its images again"
            )

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        return tuple(self._features.shape[1:])

    @property
    def storage_dtype(self) -> np.dtype:
        return self._features.dtype

    @property
    def data_root(self) -> Path:
        return Path(str(self.attrs.get("data_root", "")))

    @property
    def disk_bytes(self) -> int:
        """The index and every shard and segment it lists: what the cache takes on disk."""
        return sum(file.stat().st_size for file in {self.path, *self.shard_files, *self.segment_files})

    @property
    def shard_compression(self) -> list[str]:
        """How each shard stores its features (``none`` or ``gzip``), as the shard says."""
        return [str(handle.attrs.get(schema.COMPRESSION, "gzip" if handle[schema.FEATURES].compression else "none"))
                for handle in self._shards]

    def records(self) -> list[FileRecord]:
        if self._columns is not None:
            hashes, stamps = self._columns
            return [FileRecord(p, h, FileStamp(*s)) for p, h, s in zip(self.paths, hashes, stamps.tolist())]
        return read_records(self._file)

    def skipped(self) -> list[SkippedFile]:
        return read_skipped(self._file)

    def iter_features(
        self, indices: np.ndarray | None = None, batch_size: int = 256, dtype: np.dtype | str | None = np.float32
    ) -> Iterator[np.ndarray]:
        """Yield the features of ``indices`` (all rows if None), in that order, batch by batch.

        Reads go through whole chunks in index order, so a shuffled index array costs
        no more than a sorted one of the same rows within each batch. ``dtype=None`` yields
        the storage dtype.
        """
        if indices is None:
            indices = np.arange(len(self))
        indices = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(indices), batch_size):
            wanted = indices[start : start + batch_size]
            block = np.empty((len(wanted), *self.feature_shape), dtype=self.storage_dtype if dtype is None else dtype)
            self._fill(wanted, block)
            yield block

    def _fill(self, wanted: np.ndarray, out: np.ndarray) -> None:
        """Read the rows ``wanted`` into ``out`` (any float dtype), one run of a shard's rows at a time."""
        order = np.argsort(wanted, kind="stable")
        sorted_rows = wanted[order]
        shard, index = self._row_shard[sorted_rows], self._row_index[sorted_rows]
        runs = np.flatnonzero((np.diff(shard) != 0) | (np.diff(index) != 1)) + 1
        in_order = bool((np.diff(wanted) > 0).all())
        position = 0
        for run in np.split(np.arange(len(sorted_rows)), runs):
            if len(run) == 0:
                continue
            first = int(index[run[0]])
            block = self._read(int(shard[run[0]]), first, first + len(run))
            if in_order:
                self._store(int(shard[run[0]]), first, block, out[position : position + len(run)])
            else:
                placed = np.empty(block.shape, dtype=out.dtype)
                self._store(int(shard[run[0]]), first, block, placed)
                out[order[position : position + len(run)]] = placed
            position += len(run)

    def features(
        self,
        indices: np.ndarray | None = None,
        dtype: np.dtype | str | None = np.float32,
        on_block: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Load the features of ``indices`` (all rows if None) into memory, in that order.

        Each block is read straight into its place in the result (no second copy), and a
        float16 cache converts while it copies, so float16 reads no slower than float32.
        ``dtype=None`` returns the storage dtype. ``on_block(n)`` is called after each block
        of ``n`` rows, e.g. to advance a progress bar.
        """
        indices = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        out = np.empty((len(indices), *self.feature_shape), dtype=self.storage_dtype if dtype is None else dtype)
        for start in range(0, len(indices), _BLOCK_ROWS):
            wanted = indices[start : start + _BLOCK_ROWS]
            self._fill(wanted, out[start : start + len(wanted)])
            if on_block is not None:
                on_block(len(wanted))
        return out


_BLOCK_ROWS = 1024


def _finite(block: np.ndarray) -> bool:
    """Whether every value is finite: two reductions (NaN propagates through both), no mask."""
    return not block.size or bool(np.isfinite(block.min()) and np.isfinite(block.max()))


def locate_shards(index: Path, recorded: list[str]) -> tuple[list[Path], bool]:
    """Where the files the index lists are now, and whether that is not where it recorded them.

    Recorded paths are relative to the index's folder (where plain HDF5 readers look). A file
    of the same name in the folder named after the index as it is called now is preferred: a
    copy (``b.h5`` and ``b.h5.shards``) reads its own files, never the original's, and a cache
    renamed with its folder reads at once. Otherwise the recorded path is used, so an index
    renamed alone reads the folder of its old name. The next commit records what was found,
    so plain HDF5 readers read the same files; opening checks each file's id against the index.
    """
    folder = index.resolve().parent
    own = schema.shards_dir(index.resolve())
    files = []
    for name in recorded:
        mine = own / Path(name).name
        files.append(mine if mine.is_file() else folder / name)
    return files, any(file != folder / name for file, name in zip(files, recorded))


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a commit replaces the index: its inode, mtime and size (None: not there)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns, found.st_size


_RETRIES = 8


def _allow_open_files(count: int) -> None:
    """Raise this process's soft limit on open files so that ``count`` shards can stay open."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted if hard == resource.RLIM_INFINITY else min(wanted, hard), hard))


def read_stamps(group: h5py.Group) -> list[FileStamp]:
    """The stamps stored in ``group``; inode and ctime are ``UNKNOWN`` where older writers left them out."""
    sizes = group[schema.FILE_SIZE][()]
    mtimes = group[schema.FILE_MTIME][()]
    unknown = np.full(len(sizes), UNKNOWN, dtype=np.int64)
    inodes = group[schema.FILE_INODE][()] if schema.FILE_INODE in group else unknown
    ctimes = group[schema.FILE_CTIME][()] if schema.FILE_CTIME in group else unknown
    return [FileStamp(int(s), int(m), int(i), int(c)) for s, m, i, c in zip(sizes, mtimes, inodes, ctimes)]


def read_records(group: h5py.Group) -> list[FileRecord]:
    paths = group[schema.PATHS].asstr()[()]
    hashes = group[schema.CONTENT_HASH].asstr()[()]
    return [FileRecord(str(p), str(h), stamp) for p, h, stamp in zip(paths, hashes, read_stamps(group))]


def read_skipped(group: h5py.Group) -> list[SkippedFile]:
    sub = group[schema.SKIPPED]
    paths = sub[schema.PATHS].asstr()[()]
    reasons = sub[schema.REASONS].asstr()[()]
    depends = sub[schema.DEPENDS_ON].asstr()[()] if schema.DEPENDS_ON in sub else [""] * len(paths)
    return [SkippedFile(str(p), str(r), stamp, str(d)) for p, r, stamp, d in zip(paths, reasons, read_stamps(sub), depends)]
