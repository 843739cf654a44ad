"""The journal of a run in progress: one small, atomically written HDF5 file per batch.

While ``extract`` runs, finished batches go to ``CACHE.h5.journal/``; the cache itself
is rewritten only at the end. A kill loses at most the batch being written, and the
next run finds the journal and picks up where it stopped. The journal records the
recipe it was made with, so a run with other settings never mixes its features in.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from features_cache import schema
from features_cache.reader import read_records, read_skipped
from features_cache.records import FileRecord, SkippedFile
from features_cache.writer import FeatureSource, atomic_h5, write_records, write_skipped

RECIPE_FILE = "recipe.json"


class Journal:
    """Batches finished by an unfinished run, next to the cache they belong to."""

    def __init__(self, cache_path: str | Path) -> None:
        self.dir = schema.journal_dir(cache_path)

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
        """Commit one batch: after this returns, a kill cannot lose it."""
        number = len(self.segments())
        with atomic_h5(self.dir / f"segment-{number:08d}.h5") as f:
            f.create_dataset(schema.FEATURES, data=features)
            write_records(f, records)
            write_skipped(f, skipped)

    def contents(self) -> tuple[dict[str, tuple[FileRecord, FeatureSource]], dict[str, SkippedFile]]:
        """Every committed row and skipped file, by relative path; later batches win."""
        done: dict[str, tuple[FileRecord, FeatureSource]] = {}
        skipped: dict[str, SkippedFile] = {}
        for segment in self.segments():
            with h5py.File(segment, "r") as f:
                for index, record in enumerate(read_records(f)):
                    done[record.path] = (record, FeatureSource(str(segment), index))
                    skipped.pop(record.path, None)
                for item in read_skipped(f):
                    skipped[item.path] = item
                    done.pop(item.path, None)
        return done, skipped

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

