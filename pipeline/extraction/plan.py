"""Planning a stage-one run: per image, whether the cache (or a shard an interrupted run left
behind) already holds its features, whether a skip still holds, or whether it needs extracting.

Stat first; the content hash is read only where size or mtime changed.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from features_cache import schema
from features_cache.errors import CacheError
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp, SkippedFile, content_hash
from features_cache.shards import Shard, open_shard
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
    except CacheError as error:
        if any(schema.shards_dir(path).glob("shard-*.h5")):
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


def orphans(cache_path: Path, live: set[Path], recipe: schema.Recipe, force: bool) -> list[Shard]:
    """Shards no index lists (left by an interrupted run): verified and adopted, or deleted."""
    adopted = []
    for path in sorted(schema.shards_dir(cache_path).glob("shard-*.h5"), key=lambda p: p.stat().st_mtime_ns):
        if path.resolve() in live or force:
            continue
        try:
            adopted.append(open_shard(path, recipe, read_features=True))
        except ValueError as error:
            print(f"{path}: {error}; its images will be extracted again", file=sys.stderr)
    return adopted


def plan(dataset: Dataset, old: FeatureCache | None, adopted: list[Shard], conditions: str) -> Plan:
    """Decide per image, reading file contents only where the stat fingerprint changed.

    A file skipped before is tried again when the skip may not hold under ``conditions``
    (another ``--max-pixels`` or Pillow version) or was a transient failure.
    """
    pending_ready: dict[str, tuple[FileRecord, FeatureSource]] = {}
    pending_skipped: dict[str, SkippedFile] = {}
    for shard in adopted:
        for index, record in enumerate(shard.records):
            pending_ready[record.path] = (record, FeatureSource(str(shard.path), index))
            pending_skipped.pop(record.path, None)
        for item in shard.skipped:
            pending_skipped[item.path] = item
            pending_ready.pop(item.path, None)
    old_ready: dict[str, tuple[FileRecord, FeatureSource]] = {}
    old_skipped: dict[str, SkippedFile] = {}
    if old is not None:
        old_ready = {
            record.path: (record, FeatureSource(str(file), index))
            for record, (file, index) in zip(old.records(), old.sources())
        }
        old_skipped = {item.path: item for item in old.skipped()}
    ready, todo = {}, []
    skipped = {item.path: SkippedFile(item.path, item.reason, FileStamp(-1, -1)) for item in dataset.left_out}
    for entry in dataset.entries:
        absolute = dataset.absolute(entry)
        try:
            stamp = FileStamp.of(absolute)
        except OSError as error:
            skipped[entry.path] = SkippedFile(entry.path, f"cannot read file ({error.strerror})", FileStamp(-1, -1))
            continue
        known = pending_ready.get(entry.path) or old_ready.get(entry.path)
        failed = pending_skipped.get(entry.path) or old_skipped.get(entry.path)
        if known and known[0].stamp == stamp:
            ready[entry.path] = known
        elif failed and failed.stamp == stamp and not failed.worth_retrying(conditions):
            skipped[entry.path] = failed
        elif known and _same_content(absolute, known[0].content_hash):
            ready[entry.path] = (dataclasses.replace(known[0], stamp=stamp), known[1])
        else:
            todo.append(LoadTask(entry.path, absolute))
    wanted = {entry.path for entry in dataset.entries}
    removed = sum(1 for path in old_ready if path not in wanted)
    return Plan(ready, skipped, todo, removed)


def _same_content(path: str, expected_hash: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return content_hash(handle.read()) == expected_hash
    except OSError:
        return False


def check_drop(options: ExtractOptions, dataset: Dataset, old: FeatureCache, planned: Plan) -> None:
    """Refuse a run that would silently drop much of the cache: another data folder, or most rows gone."""
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
