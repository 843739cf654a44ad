"""What both engines share to turn model output into shards: the finiteness check and the
background writer. It sits below the local and the Ray engine, so neither imports the other."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from features_cache import schema
from features_cache.errors import no_space
from features_cache.faults import checkpoint
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


class ShardWriter:
    """Brings each batch's features to the host, checks them and writes them as a shard, on a
    background thread: the model's loop never waits for a copy, a check or a disk."""

    def __init__(
        self, cache_path: Path, recipe: schema.Recipe, feature_shape: tuple[int, ...], to_numpy: Callable[[object], np.ndarray]
    ) -> None:
        self._cache_path = cache_path
        self._recipe = recipe
        self._feature_shape = feature_shape
        self._to_numpy = to_numpy
        self.written: list[Shard] = []
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._needed = 0
        self._thread = threading.Thread(target=self._run, name="shard-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._write(*item)
                except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
                    self._error = error

    def _write(self, features, count: int, records: list[FileRecord], skipped: list[SkippedFile]) -> None:
        if count:
            host = self._to_numpy(features)[:count]
            check_finite(host, records)
        else:
            host = np.zeros((0, *self._feature_shape), dtype=self._recipe.storage_dtype)
        self._needed = 2 * host.nbytes + (1 << 20)  # the shard, and the index after it
        path = new_shard_path(self._cache_path)
        write_shard(path, self._recipe, host, records, skipped)
        self.written.append(Shard(path, path.stat().st_size, file_digest(path), records, skipped))
        checkpoint("shard-written")

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
