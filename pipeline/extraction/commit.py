"""Committing a stage-one run: the rows of the new index, version-1 features copied into
shards, the shard table, the atomic index replace, then garbage collection of shards no
row refers to. Until the index is replaced, readers see the previous cache."""

from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path

import h5py
import numpy as np

from features_cache import integrity, schema
from features_cache.errors import index_bytes, no_space, shard_bytes
from features_cache.ownership import Owner
from features_cache.reader import FeatureCache
from features_cache.records import SkippedFile
from features_cache.shards import Shard, file_digest, new_shard_path, write_shard
from features_cache.writer import FeatureSource, OpenFiles, Row, write_index
from pipeline.errors import PipelineError
from pipeline.extraction.sources import Dataset
from pipeline.versions import library_versions


def index_rows(dataset: Dataset, ready: dict[str, tuple]) -> tuple[list[str], list[Row]]:
    """The class names and the rows, in the data set's order, of every image with features."""
    present = [entry for entry in dataset.entries if entry.path in ready]
    class_names = sorted({entry.label for entry in present})
    index = {name: i for i, name in enumerate(class_names)}
    rows = [Row(ready[e.path][0], index[e.label], e.split, ready[e.path][1]) for e in present]
    return class_names, rows


def unchanged(old: FeatureCache, dataset: Dataset, class_names: list[str], rows: list[Row], skipped: list[SkippedFile]) -> bool:
    """Whether ``old`` already says exactly this: same root, classes, records, labels, splits and skips."""
    return (
        str(old.data_root) == str(dataset.root)
        and old.class_names == class_names
        and old.records() == [row.record for row in rows]
        and list(old.labels) == [row.label for row in rows]
        and list(old.splits) == [row.split for row in rows]
        and old.skipped() == skipped
        and not old.relocated  # shards found under the index's new name: record where they are
    )


def commit(
    cache_path: Path,
    recipe: schema.Recipe,
    feature_shape: tuple[int, ...],
    dataset: Dataset,
    class_names: list[str],
    rows: list[Row],
    skipped: list[SkippedFile],
    old: FeatureCache | None,
    known: list[Shard],
    attrs: dict,
    versions: dict | None = None,
    owner: Owner | None = None,
) -> set[Path]:
    """Write the new index atomically; returns the shard and segment files it lists (for garbage collection).

    ``versions`` are the libraries the features were made with: this process's by default, the
    old index's for a commit that built no model (importing Keras to ask would cost seconds).
    ``owner`` is the identity the run's shards were written for (by default the next of ``old``'s)."""
    if owner is None:
        owner = Owner.after(old.attrs) if old is not None else Owner.new()
    shards = {shard.path.resolve() for shard in known}
    if old is not None and old.version in schema.SHARDED_VERSIONS:
        shards |= {file.resolve() for file in old.shard_files}
    rows, upgraded = _into_shards(cache_path, recipe, rows, feature_shape, shards, owner)
    table = _shard_table(cache_path, rows, old, [*known, *upgraded])
    attrs = {
        "data_root": str(dataset.root),
        "source_kind": dataset.kind,
        "created_at": old.attrs.get("created_at", _now()) if old else _now(),
        **attrs,
        **(library_versions() if versions is None else versions),
    }
    try:
        segments = write_index(cache_path, recipe=recipe, feature_shape=feature_shape, class_names=class_names,
                               rows=rows, skipped=skipped, attrs=attrs, shards=table, previous=old, owner=owner)
    except OSError as error:
        raise PipelineError(str(no_space(cache_path.parent, index_bytes(len(rows)), error))) from None
    return {cache_path.parent.resolve() / name for name, *_ in table} | set(segments)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _into_shards(
    cache_path: Path, recipe: schema.Recipe, rows: list[Row], feature_shape: tuple[int, ...], shards: set[Path],
    owner: Owner | None = None,
) -> tuple[list[Row], list[Shard]]:
    """Copy rows whose features are in no shard (those of a version-1 cache being upgraded) into
    new shards; returns the rows and the shards written. ``shards`` are the shard files known
    (the old index's, wherever their folder is, and those just written or adopted)."""
    inside = {file: Path(file).resolve() in shards for file in dict.fromkeys(row.source.file for row in rows)}
    outside = [i for i, row in enumerate(rows) if not inside[row.source.file]]
    if not outside:
        return rows, []
    folder = schema.shards_dir(cache_path)
    folder.mkdir(exist_ok=True)
    rows = list(rows)
    written = []
    per_shard = schema.EXTRACT_SHARD_ROWS
    sources = OpenFiles()
    try:
        for start in range(0, len(outside), per_shard):
            part = outside[start : start + per_shard]
            features = np.stack([sources.features(rows[i].source.file)[rows[i].source.index] for i in part])
            path = new_shard_path(cache_path)
            records = [rows[i].record for i in part]
            try:
                shard_id = write_shard(path, recipe, features, records, [], owner=owner)
            except OSError as error:
                rest = len(outside) - start
                needed = shard_bytes(rest, features.nbytes // len(part), 64 * rest) + (rest // per_shard + 1) * (32 << 10) + index_bytes(len(rows))
                raise PipelineError(str(no_space(folder, needed, error))) from None
            written.append(Shard(path, path.stat().st_size, file_digest(path), records, [], shard_id))
            for n, i in enumerate(part):
                rows[i] = dataclasses.replace(rows[i], source=FeatureSource(str(path), n))
    finally:
        sources.close()
    return rows, written


def _shard_table(cache_path: Path, rows: list[Row], old: FeatureCache | None, known: list[Shard]) -> list[tuple[str, int, int, str, str]]:
    """``(relative file, rows, bytes, digest, id)`` of every shard a row refers to, in first-use order.

    What the old index and the shards just written or adopted already say is taken as said:
    no old shard is opened, so a commit costs the new shards and the index, whatever N is.
    """
    facts: dict[Path, tuple[int, int, str, str]] = {}
    if old is not None and old.version in schema.SHARDED_VERSIONS:
        facts = {f.resolve(): (count, size, digest, shard_id) for f, count, size, digest, shard_id
                 in zip(old.shard_files, old.shard_rows, old.shard_sizes, old.shard_digests, old.shard_ids)}
    facts.update({shard.path.resolve(): (len(shard.records), shard.size, shard.digest, shard.shard_id) for shard in known})
    folder = cache_path.parent.resolve()
    table: dict[Path, tuple[str, int, int, str, str]] = {}
    for name in dict.fromkeys(row.source.file for row in rows):
        file = Path(name).resolve()
        if file not in table:
            count, size, digest, shard_id = facts.get(file) or _facts_of(file)
            table[file] = (os.path.relpath(file, folder), count, size, digest, shard_id)
    return list(table.values())


def _facts_of(file: Path) -> tuple[int, int, str, str]:
    """Rows, bytes, digest and id of a shard nothing has described yet, read from the file."""
    with h5py.File(file, "r") as f:
        count, shard_id = len(f[schema.FEATURES]), integrity.stored_id(f)
    return count, file.stat().st_size, file_digest(file), shard_id
