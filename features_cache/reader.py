"""Reading caches: validated on open, features streamed in blocks or loaded when they fit."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np

from features_cache import schema
from features_cache.errors import CacheError
from features_cache.records import FileRecord, FileStamp, SkippedFile


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


class FeatureCache:
    """A finished feature cache, opened read-only.

    Opening refuses files that are missing, not HDF5, of another schema version,
    not marked complete, or that an interrupted ``extract`` run is still filling.
    """

    def __init__(self, path: str | os.PathLike, *, resuming: bool = False) -> None:
        """``resuming=True`` is for ``extract`` itself, which opens the previous cache beside its own journal."""
        self.path = Path(path)
        if not resuming and schema.journal_dir(self.path).is_dir():
            raise CacheError(
                f"{self.path}: an extraction into this cache was interrupted and is incomplete; "
                "run the same `python -m pipeline extract` command again to finish it"
            )
        if not self.path.exists():
            raise CacheError(f"{self.path}: no such cache; create it with `python -m pipeline extract DATA --cache {self.path}`")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as error:
            raise CacheError(f"{self.path}: not a readable HDF5 feature cache ({error}); rebuild it with `pipeline extract --force`") from None
        try:
            self._read_layout()
        except CacheError:
            self._file.close()
            raise
        except (KeyError, ValueError, TypeError, OSError) as error:
            self._file.close()
            raise CacheError(
                f"{self.path}: claims to be a feature cache but its layout is damaged or foreign ({one_line(error)}); "
                "rebuild it with `pipeline extract --force`"
            ) from None

    def _read_layout(self) -> None:
        """Everything but the features themselves, checked for the shapes the schema promises."""
        attrs = self._file.attrs
        if attrs.get("schema_version") != schema.SCHEMA_VERSION or not attrs.get("complete", False):
            raise CacheError(f"{self.path}: not a complete feature cache of schema version {schema.SCHEMA_VERSION}; rebuild it with `pipeline extract --force`")
        self.recipe = schema.Recipe.from_attrs(attrs)
        self.identity = str(attrs["identity"])
        self.attrs = {key: (value.item() if hasattr(value, "item") else value) for key, value in attrs.items()}
        self.class_names = [str(name) for name in self._file[schema.CLASS_NAMES].asstr()[()]]
        self.labels = self._file[schema.LABELS][()].astype(np.int64)
        self.paths = [str(p) for p in self._file[schema.PATHS].asstr()[()]]
        self.splits = np.array([str(s) for s in self._file[schema.SPLIT].asstr()[()]], dtype=object)
        self._features = self._file[schema.FEATURES]
        n = len(self.paths)
        if not (len(self.labels) == len(self.splits) == self._features.shape[0] == n) or self._features.ndim != 4:
            raise CacheError(f"{self.path}: its datasets disagree on the number of images; rebuild it with `pipeline extract --force`")
        if n and (self.labels.min() < 0 or self.labels.max() >= len(self.class_names)):
            raise CacheError(f"{self.path}: labels point outside its class names; rebuild it with `pipeline extract --force`")

    def __enter__(self) -> FeatureCache:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

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
    def features_nbytes(self) -> int:
        return int(self._features.size * self._features.dtype.itemsize)

    def records(self) -> list[FileRecord]:
        return read_records(self._file)

    def skipped(self) -> list[SkippedFile]:
        return read_skipped(self._file)

    def iter_features(
        self, indices: np.ndarray | None = None, batch_size: int = 256, dtype: np.dtype | str = np.float32
    ) -> Iterator[np.ndarray]:
        """Yield the features of ``indices`` (all rows if None), in that order, batch by batch.

        Reads go through whole chunks in index order, so a shuffled index array costs
        no more than a sorted one of the same rows within each batch.
        """
        if indices is None:
            indices = np.arange(len(self))
        indices = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(indices), batch_size):
            wanted = indices[start : start + batch_size]
            order = np.argsort(wanted, kind="stable")
            sorted_rows = wanted[order]
            block = np.empty((len(wanted), *self.feature_shape), dtype=dtype)
            runs = np.flatnonzero(np.diff(sorted_rows) != 1) + 1
            position = 0
            for run in np.split(sorted_rows, runs):
                if len(run) == 0:
                    continue
                block[order[position : position + len(run)]] = self._features[run[0] : run[-1] + 1]
                position += len(run)
            yield block

    def features(
        self,
        indices: np.ndarray | None = None,
        dtype: np.dtype | str = np.float32,
        on_block: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Load the features of ``indices`` (all rows if None) into memory, in that order.

        ``on_block(n)`` is called after each block of ``n`` rows, e.g. to advance a progress bar.
        """
        n = len(self) if indices is None else len(indices)
        out = np.empty((n, *self.feature_shape), dtype=dtype)
        position = 0
        for block in self.iter_features(indices, batch_size=1024, dtype=dtype):
            out[position : position + len(block)] = block
            position += len(block)
            if on_block is not None:
                on_block(len(block))
        return out


def read_records(group: h5py.Group) -> list[FileRecord]:
    paths = group[schema.PATHS].asstr()[()]
    hashes = group[schema.CONTENT_HASH].asstr()[()]
    sizes = group[schema.FILE_SIZE][()]
    mtimes = group[schema.FILE_MTIME][()]
    return [
        FileRecord(str(p), str(h), FileStamp(int(s), int(m)))
        for p, h, s, m in zip(paths, hashes, sizes, mtimes)
    ]


def read_skipped(group: h5py.Group) -> list[SkippedFile]:
    sub = group[schema.SKIPPED]
    paths = sub[schema.PATHS].asstr()[()]
    reasons = sub[schema.REASONS].asstr()[()]
    sizes = sub[schema.FILE_SIZE][()]
    mtimes = sub[schema.FILE_MTIME][()]
    depends = sub[schema.DEPENDS_ON].asstr()[()] if schema.DEPENDS_ON in sub else [""] * len(paths)
    return [
        SkippedFile(str(p), str(r), FileStamp(int(s), int(m)), str(d))
        for p, r, s, m, d in zip(paths, reasons, sizes, mtimes, depends)
    ]
