"""What both engines share to turn model output into shards: the finiteness check and the
background writer. It sits below the local and the Ray engine, so neither imports the other."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from features_cache import schema
from features_cache.errors import index_bytes, no_space, shard_bytes
from features_cache.faults import checkpoint
from features_cache.ownership import Owner
from features_cache.records import FileRecord, SkippedFile
from features_cache.shards import Shard, file_digest, new_shard_path, write_shard
from pipeline.errors import PipelineError


def check_finite(features: np.ndarray, records: list[FileRecord]) -> None:
    """Refuse NaN or infinite features: they would poison every head trained on the cache."""
    bad = ~np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    if bad.any():
        raise PipelineError(
            f"{records[int(np.flatnonzero(bad)[0])].path}: the backbone produced non-finite features; "
            "check the image and --precision (float32 avoids overflow), then run again"
        )


SHARD_ROWS = schema.EXTRACT_SHARD_ROWS  # 100 MB of float16 at 224 px held at most before it is written
SHARD_SECONDS = schema.EXTRACT_SHARD_SECONDS


class ShardWriter:
    """Brings each batch's features to the host, checks them and writes them into shards, on a
    background thread: the model's loop never waits for a copy, a check or a disk.

    Batches gather into one shard until it holds ``shard_rows`` rows (and skips) or its first
    batch is ``shard_seconds`` old, so a kill loses at most that much work while a cache of
    millions of images stays thousands of files. ``close`` writes what has gathered (an
    interrupted run keeps every finished batch)."""

    def __init__(
        self, cache_path: Path, recipe: schema.Recipe, feature_shape: tuple[int, ...], to_numpy: Callable[[object], np.ndarray],
        *, remaining_rows: int = 0, index_rows: int = 0, shard_rows: int = SHARD_ROWS, shard_seconds: float = SHARD_SECONDS,
        compression: str = "none", owner: Owner | None = None,
    ) -> None:
        """``remaining_rows`` (images still to write) and ``index_rows`` (rows of the index to
        commit) size the "free N MB" of a full disk: what the rest of the job needs, not one batch."""
        self._cache_path = cache_path
        self._recipe = recipe
        self._feature_shape = feature_shape
        self._to_numpy = to_numpy
        self._shard_rows = max(1, shard_rows)
        self._shard_seconds = shard_seconds
        self._compression = compression
        self._owner = owner
        self.written: list[Shard] = []
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._needed = 0
        self._remaining = remaining_rows
        self._index_rows = index_rows
        self._gathered: list[tuple[np.ndarray, list[FileRecord], list[SkippedFile]]] = []
        self._gathered_since = 0.0
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._guarded(self._gather, *item)
        self._guarded(self._flush)

    def _guarded(self, step: Callable, *args) -> None:
        if self._error is None:
            try:
                step(*args)
            except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
                self._error = error

    def _gather(self, features, count: int, records: list[FileRecord], skipped: list[SkippedFile]) -> None:
        if count:
            host = np.asarray(self._to_numpy(features)[:count])
            check_finite(host, records)
            host = host.astype(self._recipe.storage_dtype, copy=False)
        else:
            host = np.zeros((0, *self._feature_shape), dtype=self._recipe.storage_dtype)
        if not self._gathered:
            self._gathered_since = time.monotonic()
        self._gathered.append((host, records, skipped))
        gathered = sum(len(r) + len(s) for _, r, s in self._gathered)
        if gathered >= self._shard_rows or time.monotonic() - self._gathered_since >= self._shard_seconds:
            self._flush()

    def _flush(self) -> None:
        """Write what has gathered as one shard."""
        if not self._gathered:
            return
        host = np.concatenate([h for h, _, _ in self._gathered]) if len(self._gathered) > 1 else self._gathered[0][0]
        records = [r for _, rs, _ in self._gathered for r in rs]
        skipped = [s for _, _, ss in self._gathered for s in ss]
        self._gathered = []
        self._needed = self._rest_of_job(host, records, skipped)
        path = new_shard_path(self._cache_path)
        shard_id = write_shard(path, self._recipe, host, records, skipped, self._compression, self._owner)
        self._remaining -= len(records) + len(skipped)
        self.written.append(Shard(path, path.stat().st_size, file_digest(path), records, skipped, shard_id))
        checkpoint("shard-written")

    def _rest_of_job(self, host: np.ndarray, records: list[FileRecord], skipped: list[SkippedFile]) -> int:
        """Bytes this shard, the shards after it and the index need, at this shard's rows per shard."""
        per_shard = max(1, len(records) + len(skipped))
        remaining = max(self._remaining, per_shard)
        row_bytes = host.nbytes // max(1, len(host)) if len(host) else int(np.prod(self._feature_shape)) * host.dtype.itemsize
        path_bytes = sum(len(r.path.encode()) for r in [*records, *skipped]) // per_shard
        shards = -(-remaining // per_shard)
        return shards * shard_bytes(per_shard, row_bytes, per_shard * path_bytes) + index_bytes(max(self._index_rows, remaining))

    def put(self, features, count: int, records: list[FileRecord], skipped: list[SkippedFile]) -> None:
        self._raise_if_failed()
        self._queue.put((features, count, records, skipped))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        folder = schema.shards_dir(self._cache_path)
        if isinstance(self._error, OSError):
            raise PipelineError(str(no_space(folder, self._needed, self._error))) from None
        if self._error is not None:
            raise self._error
