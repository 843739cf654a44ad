"""The journal of a run in progress: one small, atomically written HDF5 file per batch.

While ``extract`` runs, finished batches go to ``CACHE.h5.journal/``; the cache itself
is rewritten only at the end. A kill loses at most the batch being written, and the
next run finds the journal and picks up where it stopped. The journal records the
recipe it was made with, so a run with other settings never mixes its features in.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from features_cache import schema
from features_cache.reader import read_records, read_skipped
from features_cache.records import FileRecord, SkippedFile
from features_cache.writer import FeatureSource, write_atomically, write_records, write_skipped

RECIPE_FILE = "recipe.json"


class Journal:
    """Batches finished by an unfinished run, next to the cache they belong to."""

    def __init__(self, cache_path: str | Path) -> None:
        self.dir = schema.journal_dir(cache_path)
        self.damaged: list[str] = []

    def exists(self) -> bool:
        return self.dir.is_dir()

    def recipe(self) -> schema.Recipe | None:
        """The recipe the journal was started with, or None if there is no usable journal."""
        try:
            return schema.Recipe(**json.loads((self.dir / RECIPE_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def start(self, recipe: schema.Recipe) -> None:
        """Begin a fresh journal for ``recipe`` (the caller has dealt with any old one)."""
        self.remove()
        self.dir.mkdir(parents=True)
        tmp = self.dir / (RECIPE_FILE + ".tmp")
        tmp.write_text(json.dumps(recipe.__dict__, sort_keys=True))
        tmp.replace(self.dir / RECIPE_FILE)

    def segments(self) -> list[Path]:
        return sorted(self.dir.glob("segment-*.h5"))

    def append(
        self, features: np.ndarray, records: Sequence[FileRecord], skipped: Sequence[SkippedFile]
    ) -> None:
        """Commit one batch: after this returns, a kill cannot lose it.

        Segments are named by creation time and a random suffix, never by a count: after a
        segment is lost or removed, a count would reuse the name of one that rows are still
        planned to come from.
        """
        name = f"segment-{time.time_ns():020d}-{uuid.uuid4().hex[:12]}.h5"
        image = io.BytesIO()  # built in memory: HDF5 never meets a full disk, plain writes report it cleanly
        with h5py.File(image, "w") as f:
            f.create_dataset(schema.FEATURES, data=features)
            write_records(f, records)
            write_skipped(f, skipped)
        write_atomically(self.dir / name, image.getvalue())

    def contents(self) -> tuple[dict[str, tuple[FileRecord, FeatureSource]], dict[str, SkippedFile]]:
        """Every committed row and skipped file, by relative path; later batches win.

        A segment that cannot be read whole (truncated, zeroed, not HDF5, rows and features
        of different lengths) is deleted and named in ``damaged``: its images are extracted again.
        """
        done: dict[str, tuple[FileRecord, FeatureSource]] = {}
        skipped: dict[str, SkippedFile] = {}
        for segment in self.segments():
            try:
                with h5py.File(segment, "r") as f:
                    records, failed = read_records(f), read_skipped(f)
                    if f[schema.FEATURES].shape[0] != len(records):
                        raise ValueError("features and records differ in length")
            except (OSError, KeyError, ValueError, TypeError):
                self.damaged.append(segment.name)
                segment.unlink(missing_ok=True)
                continue
            for index, record in enumerate(records):
                done[record.path] = (record, FeatureSource(str(segment), index))
                skipped.pop(record.path, None)
            for item in failed:
                skipped[item.path] = item
                done.pop(item.path, None)
        return done, skipped

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

