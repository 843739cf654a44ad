"""Planning a stage-one run: per image, whether the cache (or a shard an interrupted run left
behind) already holds its features, whether a skip still holds, or whether it needs extracting.

An image is its content: features are found by content hash, the stat stamp only spares
reading files that cannot have changed. Stat first; a file is read and hashed again when

- its path has a row but the stamp differs in size, mtime, inode or ctime (a swap by
  renames keeps size and mtime but not the inode at each path; rows of caches written
  before inode and ctime were stored never match, so their files are hashed once);
- the stamp matches but the file's mtime is not at least :data:`RACY_NS` older than the
  commit of the index that recorded it (git's "racy" case: a change in the same timestamp
  granule as the stamp leaves the stamp as it was);
- its path has a row in an orphan shard: no commit vouches for an interrupted run's
  stamps, so the row is adopted only if the bytes hash the same;
- its path is new (or its content changed) and some row exists: a row of the same
  content, under any path, lends its features (a rename, a move, a relabel).

A fresh cache (no index, no orphans) hashes nothing here: the decoder hashes what it reads.
"""

from __future__ import annotations

import collections
import dataclasses
import sys
from pathlib import Path

import h5py

from features_cache import ownership, schema
from features_cache.errors import CacheError, MissingShards
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp, SkippedFile, file_content_hash
from features_cache.shards import Shard, open_shard, strays
from features_cache.writer import FeatureSource
from pipeline.errors import PipelineError
from pipeline.extraction.loader import LoadTask
from pipeline.extraction.options import ExtractOptions
from pipeline.extraction.sources import Dataset


@dataclasses.dataclass
class Plan:
    """Per image: where its features come from, or that it still needs extracting."""

    ready: dict[str, tuple[FileRecord, FeatureSource]]
    skipped: dict[str, SkippedFile]
    todo: list[LoadTask]
    removed: int

    def add_new_shards(self, shards: list[Shard]) -> None:
        """Take the rows and skips of freshly written ``shards`` for the images this plan extracted."""
        todo = {task.path for task in self.todo}
        for shard in shards:
            for index, record in enumerate(shard.records):
                if record.path in todo:
                    self.ready[record.path] = (record, FeatureSource(str(shard.path), index))
            self.skipped.update({item.path: item for item in shard.skipped if item.path in todo})

    @property
    def extracted(self) -> int:
        return sum(1 for task in self.todo if task.path not in self.skipped)


def open_existing(options: ExtractOptions, recipe: schema.Recipe) -> FeatureCache | None:
    """The cache to build on, or None; refuse one made differently unless ``force``.

    An index that cannot be read is rebuilt from the shards that verify, when there are any.
    """
    path = Path(options.cache)
    if path.is_dir():
        if not options.force or any(path.iterdir()):
            raise PipelineError(f"{path}: is a folder, not a cache file; remove it (--force removes an empty one) or choose another --cache")
        path.rmdir()
    if not path.exists() or options.force:
        return None
    try:
        old = FeatureCache(path)
    except MissingShards as error:
        raise PipelineError(str(error)) from None
    except CacheError as error:
        if any(schema.shards_dir(path).glob("shard-*.h5")) or _an_index(path):
            print(f"{error}; rebuilding the index from the shards that verify", file=sys.stderr)
            return None
        raise PipelineError(f"{path}: exists but is not a readable feature cache; remove it or pass --force to overwrite it") from None
    if old.recipe != recipe:
        old.close()
        raise PipelineError(
            f"{path} was made with other settings ({'; '.join(recipe.differences(old.recipe))}); "
            "use the same settings, another --cache, or --force to rebuild it"
        )
    return old


def _an_index(path: Path) -> bool:
    """Whether ``path`` is an index whose files are gone or damaged (not some other file): the next run rebuilds it."""
    try:
        with h5py.File(path, "r") as f:
            return int(f.attrs.get("schema_version", 0)) in schema.SHARDED_VERSIONS and schema.SHARDS in f
    except (OSError, KeyError, TypeError, ValueError):
        return False


def orphans(
    cache_path: Path, old: FeatureCache | None, recipe: schema.Recipe, force: bool, keep: bool = False,
) -> tuple[list[Shard], list[Path]]:
    """Shards of this cache that no index lists and no commit vouches for (left by an interrupted run):
    verified and adopted, or reported and returned as rejected, for the caller to delete with the
    garbage (kept with ``keep``, i.e. ``--keep-orphans``). No index refers to them, so readers lose
    nothing; files another index beside it names are not this cache's (:mod:`features_cache.ownership`).
    A shard whose every row the index already holds is garbage, not an orphan: returned as rejected."""
    adopted, rejected = [], []
    if force:
        return adopted, rejected
    listed = {file.resolve() for file in [*old.shard_files, *old.segment_files]} if old is not None else set()
    found = ownership.survey(cache_path, listed, old.owner if old is not None else None)
    held = set(zip(old.paths, old.content_columns()[0])) if old is not None and found.orphans else set()
    for path in sorted(found.orphans, key=lambda p: p.lstat().st_mtime_ns):
        try:
            shard = open_shard(path, recipe, read_features=True)
        except ValueError as error:
            rejected.append(path)
            fate = "kept (--keep-orphans)" if keep else "deleted, any of its images still in the data are extracted again"
            print(f"{path}: not adopted ({error}); {fate}", file=sys.stderr)
            continue
        if shard.records and not shard.skipped and {(r.path, r.content_hash) for r in shard.records} <= held:
            rejected.append(path)  # a clean-up a kill interrupted: the index already reads these rows elsewhere
        else:
            adopted.append(shard)
    return adopted, rejected


def list_strays(cache_path: Path) -> None:
    """Name, once per run, what sits in the shards folder but is no shard (a folder, another file)."""
    for path in strays(cache_path):
        kind = "a folder" if path.is_dir() and not path.is_symlink() else "not a shard file"
        print(f"{path}: {kind} in the shards folder, not part of the cache; left alone, remove it", file=sys.stderr)


RACY_NS = 2 * 10**9  # the coarsest common mtime granule (FAT: 2 s); finer ones only hash a few files more


@dataclasses.dataclass(frozen=True)
class _Known:
    """A row that may hold an image's features, and until when its stamp can vouch for the bytes."""

    record: FileRecord
    source: FeatureSource
    committed_ns: int | None  # the commit that recorded the stamp; None: never trust the stamp


def plan(dataset: Dataset, old: FeatureCache | None, adopted: list[Shard], conditions: str) -> Plan:
    """Decide per image, reading file contents only where the stamp cannot vouch for them.

    A file skipped before is tried again when the skip may not hold under ``conditions``
    (another ``--max-pixels`` or Pillow version) or was a transient failure.
    """
    orphan_rows, orphan_skips = _orphan_rows(adopted)
    old_rows = _index_rows(old)
    old_skipped = {item.path: item for item in old.skipped()} if old is not None else {}
    by_content = _by_content([*old_rows.values(), *orphan_rows.values()])
    ready: dict[str, tuple[FileRecord, FeatureSource]] = {}
    todo: list[LoadTask] = []
    skipped = {item.path: SkippedFile(item.path, item.reason, FileStamp(-1, -1)) for item in dataset.left_out}
    for entry in dataset.entries:
        absolute = dataset.absolute(entry)
        try:
            stamp = FileStamp.of(absolute)
        except OSError as error:
            skipped[entry.path] = SkippedFile(entry.path, f"cannot read file ({error.strerror})", FileStamp(-1, -1))
            continue
        known = orphan_rows.get(entry.path) or old_rows.get(entry.path)
        failed = orphan_skips.get(entry.path) or old_skipped.get(entry.path)
        if known and _trusted(known, stamp):
            ready[entry.path] = (known.record, known.source)
        elif failed and failed.stamp == stamp and not failed.worth_retrying(conditions):
            skipped[entry.path] = failed
        elif found := _same_content(absolute, known, by_content):
            ready[entry.path] = (FileRecord(entry.path, found.record.content_hash, stamp), found.source)
        else:
            todo.append(LoadTask(entry.path, absolute))
    return Plan(ready, skipped, todo, _removed(dataset, old_rows, ready))


def _orphan_rows(adopted: list[Shard]) -> tuple[dict[str, _Known], dict[str, SkippedFile]]:
    """Per path, the latest row or skip the orphan shards hold (later shards win)."""
    rows: dict[str, _Known] = {}
    skips: dict[str, SkippedFile] = {}
    for shard in adopted:
        for index, record in enumerate(shard.records):
            rows[record.path] = _Known(record, FeatureSource(str(shard.path), index), None)
            skips.pop(record.path, None)
        for item in shard.skipped:
            skips[item.path] = item
            rows.pop(item.path, None)
    return rows, skips


def _index_rows(old: FeatureCache | None) -> dict[str, _Known]:
    """Per path, the row the index lists, vouched for up to the index's commit (its file's mtime)."""
    if old is None:
        return {}
    try:
        committed_ns: int | None = old.path.stat().st_mtime_ns
    except OSError:
        committed_ns = None
    return {
        record.path: _Known(record, FeatureSource(str(file), index), committed_ns)
        for record, (file, index) in zip(old.records(), old.sources())
    }


def _by_content(rows: list[_Known]) -> dict[str, _Known]:
    """Rows by content hash, the first of each content: what a renamed or moved file can reuse."""
    found: dict[str, _Known] = {}
    for row in rows:
        found.setdefault(row.record.content_hash, row)
    return found


def _trusted(known: _Known, stamp: FileStamp) -> bool:
    """Whether the stamp alone proves the bytes are those ``known`` was made from."""
    return (
        known.committed_ns is not None
        and known.record.stamp == stamp
        and stamp.file_mtime_ns < known.committed_ns - RACY_NS
    )


def _same_content(absolute: str, known: _Known | None, by_content: dict[str, _Known]) -> _Known | None:
    """The row holding this file's bytes (its own path's first, then any), hashing only if one may exist."""
    if known is None and not by_content:
        return None
    try:
        digest = file_content_hash(absolute)
    except OSError:
        return None  # the decoder will report it
    if known is not None and known.record.content_hash == digest:
        return known
    return by_content.get(digest)


def _removed(dataset: Dataset, old_rows: dict[str, _Known], ready: dict[str, tuple[FileRecord, FeatureSource]]) -> int:
    """Old paths gone from the data, less those whose content arrived under a new path: a move
    (or rename, or relabel) is not a removal, but dropping one of two copies is."""
    wanted = {entry.path for entry in dataset.entries}
    gone = collections.Counter(row.record.content_hash for path, row in old_rows.items() if path not in wanted)
    arrived = collections.Counter(record.content_hash for path, (record, _) in ready.items() if path not in old_rows)
    return sum(max(0, count - arrived[digest]) for digest, count in gone.items())


def check_drop(options: ExtractOptions, dataset: Dataset, old: FeatureCache, planned: Plan) -> None:
    """Refuse a run that would silently drop much of the cache: another data folder, or most rows gone.

    Rows whose content moved to another path (a renamed file or class folder) do not count as gone.
    """
    if options.prune or options.force or not planned.removed:
        return  # a moved data folder whose images are all found drops nothing
    if str(old.data_root) and str(old.data_root) != str(dataset.root):
        raise PipelineError(
            f"{options.cache} was made from {old.data_root}, not {dataset.root}; rows of images not in "
            "the new folder would be dropped: pass --prune to drop them, or another --cache"
        )
    if planned.removed * 2 > len(old):
        raise PipelineError(
            f"{options.cache}: {planned.removed} of its {len(old)} images are no longer in {dataset.root}; "
            "pass --prune to drop their rows, or check the data folder"
        )
