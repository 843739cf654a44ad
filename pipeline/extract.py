"""Stage one: images to a feature cache, incrementally, resumably, and never silently wrong.

A run (1) finds the images, (2) decides per image whether the cache or an interrupted
run's journal already holds its features (stat first, content hash only where size or
mtime changed), (3) extracts the rest batch by batch into the journal, and (4) writes the
new cache atomically and drops the journal.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import hashlib
import json
import os
import queue
import socket
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from features_cache import schema
from features_cache.errors import CacheError
from features_cache.journal import Journal
from features_cache.lock import exclusive_writer
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp, SkippedFile, content_hash
from features_cache.writer import FeatureSource, Row, write_cache
from pipeline import progress
from pipeline.backbone_specs import check_backbone, cpu_flags, weights_path
from pipeline.errors import PipelineError
from pipeline.images import BACKGROUND, DEFAULT_MAX_PIXELS, ResizeSpec, skip_conditions
from pipeline.loader import LoadTask, iter_batches
from pipeline.sources import Dataset, discover
from pipeline.versions import library_versions

if TYPE_CHECKING:
    from pipeline.backbones import Backbone

STORAGE_DTYPES = ("float16", "float32")


@dataclasses.dataclass(frozen=True)
class ExtractOptions:
    data: str
    cache: str
    backbone: str = "vgg16"
    weights: str = "imagenet"
    image_size: int = 224
    batch_size: int = 32
    precision: str = "auto"
    storage_dtype: str = "float16"
    resize: str = "stretch"
    interpolation: str = "bilinear"
    max_pixels: int | None = None
    workers: int | None = None
    seed: int = 0
    force: bool = False
    prune: bool = False


@dataclasses.dataclass
class ExtractReport:
    cache: Path
    n_images: int
    n_classes: int
    extracted: int
    kept: int
    removed: int
    skipped: list[SkippedFile]
    seconds: float
    extract_seconds: float
    written: bool
    reading: str = ""
    notes: tuple[str, ...] = ()

    @property
    def images_per_second(self) -> float:
        return self.extracted / self.extract_seconds if self.extract_seconds else 0.0


@dataclasses.dataclass
class _Plan:
    """Per image: where its features come from, or that it still needs extracting."""

    ready: dict[str, tuple[FileRecord, FeatureSource]]
    skipped: dict[str, SkippedFile]
    todo: list[LoadTask]
    removed: int


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _check_options(options: ExtractOptions) -> None:
    if options.storage_dtype not in STORAGE_DTYPES:
        raise PipelineError(f"unknown storage dtype {options.storage_dtype!r}; use float16 or float32")
    if options.batch_size < 1:
        raise PipelineError(f"--batch-size must be at least 1, got {options.batch_size}")
    if options.max_pixels is not None and options.max_pixels < 1:
        raise PipelineError(f"--max-pixels must be a positive number of pixels, got {options.max_pixels}")
    if options.image_size < 1:
        raise PipelineError(f"--image-size must be a positive number of pixels, got {options.image_size}")
    check_backbone(options.backbone)
    if Path(options.cache).is_dir():
        raise PipelineError(f"--cache {options.cache}: is a folder; pass a file path, e.g. {Path(options.cache) / 'features.h5'}")
    parent = Path(options.cache).resolve().parent
    if not parent.is_dir():
        raise PipelineError(f"{options.cache}: folder {parent} does not exist; create it or choose another --cache path")
    if not os.access(parent, os.W_OK):
        raise PipelineError(f"{options.cache}: folder {parent} is not writable; choose another --cache path")


def _open_existing(options: ExtractOptions, recipe: schema.Recipe) -> FeatureCache | None:
    """The cache to build on, or None; refuse one made differently unless ``force``."""
    path = Path(options.cache)
    if not path.exists() or options.force:
        return None
    try:
        with h5py.File(path, "r") as f:
            complete = bool(f.attrs.get("complete", False))
            theirs = schema.Recipe.from_attrs(f.attrs) if complete else None
    except (OSError, KeyError):
        raise PipelineError(f"{path}: exists but is not a feature cache; remove it or pass --force to overwrite it") from None
    if theirs is None:
        raise PipelineError(f"{path}: exists but is not a complete feature cache; pass --force to rebuild it")
    if theirs != recipe:
        raise PipelineError(
            f"{path} was made with other settings ({'; '.join(recipe.differences(theirs))}); "
            "use the same settings, another --cache, or --force to rebuild it"
        )
    return FeatureCache(path, resuming=True)


def _check_journal(journal: Journal, recipe: schema.Recipe, force: bool) -> None:
    if not journal.exists():
        return
    theirs = journal.recipe()
    if force or theirs is None:  # --force rebuilds from scratch, an unreadable journal is worth nothing
        journal.remove()
        return
    if theirs == recipe:
        return
    raise PipelineError(
        f"{journal.dir}: an interrupted run with other settings ({'; '.join(recipe.differences(theirs))}) "
        "is pending; re-run with its settings to finish it, or pass --force to discard it"
    )


def _plan(dataset: Dataset, old: FeatureCache | None, journal: Journal, conditions: str) -> _Plan:
    """Decide per image, reading file contents only where the stat fingerprint changed.

    A file skipped before is tried again when the skip may not hold under ``conditions``
    (another ``--max-pixels`` or Pillow version) or was a transient failure.
    """
    journal_ready, journal_skipped = journal.contents() if journal.exists() else ({}, {})
    old_ready: dict[str, tuple[FileRecord, FeatureSource]] = {}
    old_skipped: dict[str, SkippedFile] = {}
    if old is not None:
        old_ready = {
            record.path: (record, FeatureSource(str(old.path), index)) for index, record in enumerate(old.records())
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
        known = journal_ready.get(entry.path) or old_ready.get(entry.path)
        failed = journal_skipped.get(entry.path) or old_skipped.get(entry.path)
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
    return _Plan(ready, skipped, todo, removed)


def _same_content(path: str, expected_hash: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return content_hash(handle.read()) == expected_hash
    except OSError:
        return False


class _JournalWriter:
    """Commits batches to the journal on a background thread, off the model's critical path."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="journal-writer", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            if self._error is None:
                try:
                    features, records, skipped = item
                    features, records, skipped = _finite_rows(np.asarray(features), records, skipped)
                    self._journal.append(features, records, skipped)
                except BaseException as error:  # noqa: BLE001 - re-raised on the main thread
                    self._error = error

    def put(self, features, records: list[FileRecord], skipped: list[SkippedFile]) -> None:
        self._raise_if_failed()
        self._queue.put((features, records, skipped))

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()

    def _raise_if_failed(self) -> None:
        if isinstance(self._error, OSError):
            folder = self._journal.dir.parent
            if self._error.errno == errno.ENOSPC or "Errno 28" in str(self._error):
                raise PipelineError(
                    f"{folder}: no space left on the device while writing features; free space in {folder} "
                    "and run the same command again (finished batches are kept)"
                ) from None
            raise PipelineError(
                f"{self._journal.dir}: cannot write features ({' '.join(str(self._error).split())[:200]}); "
                "fix the folder and run the same command again"
            ) from None
        if self._error is not None:
            raise self._error


def _finite_rows(
    features: np.ndarray, records: list[FileRecord], skipped: list[SkippedFile]
) -> tuple[np.ndarray, list[FileRecord], list[SkippedFile]]:
    """Rows whose features hold NaN or inf become skipped files: a cache never stores them."""
    if not len(features):
        return features, records, skipped
    finite = np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    if finite.all():
        return features, records, skipped
    reason = "the backbone gave non-finite features (NaN or inf), e.g. a float16 overflow; try --precision float32"
    bad = [SkippedFile(record.path, reason, record.stamp) for record, ok in zip(records, finite) if not ok]
    return features[finite], [record for record, ok in zip(records, finite) if ok], skipped + bad


def _extract(backbone: Backbone, plan: _Plan, spec: ResizeSpec, options: ExtractOptions, journal: Journal) -> float:
    """Run the model over ``plan.todo`` into the journal; returns the seconds it took."""
    started = time.perf_counter()
    writer = _JournalWriter(journal)
    batches = iter_batches(plan.todo, spec, options.batch_size, options.workers)
    try:
        with progress.bar("extracting", total=len(plan.todo)) as advance:
            for batch in batches:
                if batch.count:
                    features = backbone.predict(batch.images)[: batch.count]
                else:
                    features = np.zeros((0, *backbone.feature_shape), dtype=options.storage_dtype)
                writer.put(features, batch.records, batch.skipped)
                advance(batch.count + len(batch.skipped))
    finally:
        writer.close()
    return time.perf_counter() - started


def _rows(dataset: Dataset, ready: dict[str, tuple[FileRecord, FeatureSource]]) -> tuple[list[str], list[Row]]:
    present = [entry for entry in dataset.entries if entry.path in ready]
    class_names = sorted({entry.label for entry in present})
    index = {name: i for i, name in enumerate(class_names)}
    rows = [Row(ready[e.path][0], index[e.label], e.split, ready[e.path][1]) for e in present]
    return class_names, rows


def _unchanged(old: FeatureCache, dataset: Dataset, class_names: list[str], rows: list[Row], skipped: list[SkippedFile]) -> bool:
    return (
        str(old.data_root) == str(dataset.root)
        and old.class_names == class_names
        and old.records() == [row.record for row in rows]
        and list(old.labels) == [row.label for row in rows]
        and list(old.splits) == [row.split for row in rows]
        and old.skipped() == skipped
    )


def _request_fingerprint(options: ExtractOptions) -> str:
    """What was asked for, on which machine and libraries: a cheap stand-in for the recipe.

    When it equals the one stored by the run that wrote the cache, and no file changed,
    the run is a no-op decided without importing Keras or building the model. Anything
    else takes the full path, which checks the real recipe.
    """
    weights_file = weights_path(options.backbone, options.weights, options.image_size)
    stamp = None
    if weights_file is not None and weights_file.is_file():
        stamp = dataclasses.astuple(FileStamp.of(weights_file))
    payload = {
        **{key: value for key, value in dataclasses.asdict(options).items() if key not in _NOT_IN_REQUEST},
        "weights_file": str(weights_file) if weights_file else None,
        "weights_stamp": stamp,
        "host": socket.gethostname(),
        "keras_backend": os.environ.get("KERAS_BACKEND", ""),
        "keras": _installed_version("keras"),
        "cpu_bfloat16": sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


_NOT_IN_REQUEST = ("data", "cache", "workers", "force", "prune", "batch_size")


def _installed_version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


def _report(
    cache_path: Path,
    plan: _Plan,
    class_names: list[str],
    rows: list[Row],
    skipped: list[SkippedFile],
    started: float,
    extract_seconds: float,
    written: bool,
) -> ExtractReport:
    extracted = sum(1 for task in plan.todo if task.path not in plan.skipped)
    return ExtractReport(
        cache=cache_path,
        n_images=len(rows),
        n_classes=len(class_names),
        extracted=extracted,
        kept=len(rows) - extracted,
        removed=plan.removed,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        extract_seconds=extract_seconds,
        written=written,
    )


def _skipped_in_order(dataset: Dataset, plan: _Plan) -> list[SkippedFile]:
    """Unreadable images in path order, then what the walk left out (loops, repeats, unstorable names)."""
    unreadable = [plan.skipped[e.path] for e in dataset.entries if e.path in plan.skipped]
    return unreadable + [plan.skipped[item.path] for item in dataset.left_out]


def _nothing_to_do(
    options: ExtractOptions, dataset: Dataset, spec: ResizeSpec, request: str, started: float
) -> ExtractReport | None:
    """The report of a no-op run, if this request and every file are as the cache recorded them."""
    path = Path(options.cache)
    if options.force or not path.exists() or schema.journal_dir(path).exists():
        return None
    try:
        cache = FeatureCache(path)
    except CacheError:
        return None
    with cache:
        if cache.attrs.get("request") != request:
            return None
        plan = _plan(dataset, cache, Journal(path), skip_conditions(spec))
        class_names, rows = _rows(dataset, plan.ready)
        skipped = _skipped_in_order(dataset, plan)
        if plan.todo or not rows or not _unchanged(cache, dataset, class_names, rows, skipped):
            return None
    return _report(path, plan, class_names, rows, skipped, started, 0.0, written=False)


def _update(options: ExtractOptions, dataset: Dataset, spec: ResizeSpec, request: str, started: float) -> ExtractReport:
    """The full path: build the backbone, check the recipe, extract what is missing, write."""
    from pipeline.backbones import build_backbone, tf32_allowed

    cache_path = Path(options.cache)
    precision, notes = _precision_for(options)
    backbone = build_backbone(
        options.backbone,
        weights=options.weights,
        image_size=options.image_size,
        precision=precision,
        storage_dtype=options.storage_dtype,
        seed=options.seed,
    )
    recipe = schema.Recipe(
        backbone=backbone.name,
        weights=backbone.weights,
        weights_sha256=backbone.weights_sha256,
        image_size=options.image_size,
        preprocessing=backbone.preprocessing,
        resize=spec.resize,
        interpolation=spec.interpolation,
        background="rgb({},{},{})".format(*BACKGROUND),
        precision=backbone.precision,
        storage_dtype=options.storage_dtype,
    )
    journal = Journal(cache_path)
    _check_journal(journal, recipe, options.force)
    old = _open_existing(options, recipe)
    try:
        plan = _plan(dataset, old, journal, skip_conditions(spec))
        if old is not None:
            notes += _check_removals(options, dataset, old, plan)
        if journal.damaged:
            notes.append(
                f"removed {len(journal.damaged)} damaged journal segment(s) of the interrupted run "
                f"({', '.join(journal.damaged[:3])}); their images are extracted again"
            )
        extract_seconds = 0.0
        if plan.todo:
            if not journal.exists():
                journal.start(recipe)
            extract_seconds = _extract(backbone, plan, spec, options, journal)
            ready, failed = journal.contents()
            todo = {task.path for task in plan.todo}
            plan.ready.update({path: ready[path] for path in ready.keys() & todo})
            plan.skipped.update({path: failed[path] for path in failed.keys() & todo})
        class_names, rows = _rows(dataset, plan.ready)
        skipped = _skipped_in_order(dataset, plan)
        if not rows:
            raise PipelineError(
                f"{options.data}: none of the {len(dataset.entries)} files could be read "
                f"(first: {skipped[0].path}: {skipped[0].reason}); check the files and run again"
            )
        written = old is None or journal.exists() or not _unchanged(old, dataset, class_names, rows, skipped)
        if written:
            write_cache(
                cache_path,
                recipe=recipe,
                feature_shape=backbone.feature_shape,
                class_names=class_names,
                rows=rows,
                skipped=skipped,
                attrs={
                    "data_root": str(dataset.root),
                    "source_kind": dataset.kind,
                    "created_at": old.attrs["created_at"] if old else _now(),
                    "request": request,
                    "tf32": {True: "allowed", False: "off", None: "not applicable (CPU)"}[tf32_allowed()],
                    **library_versions(),
                },
            )
    finally:
        if old is not None:
            old.close()
    journal.remove()
    report = _report(cache_path, plan, class_names, rows, skipped, started, extract_seconds, written)
    return dataclasses.replace(report, notes=tuple(notes))


def _precision_for(options: ExtractOptions) -> tuple[str, list[str]]:
    """``auto`` on an existing cache means the cache's precision, where this machine runs it; else ``auto``.

    A cache made on a GPU in bfloat16 stays extendable on a laptop with the same command.
    """
    path = Path(options.cache)
    if options.precision != "auto" or options.force or not path.is_file():
        return options.precision, []
    try:
        with h5py.File(path, "r") as f:
            cached = str(f.attrs.get("recipe.precision", ""))
    except OSError:
        return options.precision, []
    from pipeline.backbones import has_accelerator

    if cached in ("float32", "bfloat16") or (cached == "float16" and has_accelerator()):
        return cached, [f"precision auto: {cached}, as {path} was made with"]
    return options.precision, []


def _check_removals(options: ExtractOptions, dataset: Dataset, old: FeatureCache, plan: _Plan) -> list[str]:
    """Refuse to drop cached images silently when the data root changed or most of them would go."""
    moved = str(old.data_root) != str(dataset.root)
    if not plan.removed:
        return [f"data root moved from {old.data_root} to {dataset.root}; every image was found there"] if moved else []
    if options.prune or options.force:
        return [f"{plan.removed} cached images no longer in {dataset.root} were dropped (--prune)"]
    if moved or 2 * plan.removed > len(old):
        cause = f"it was made from {old.data_root}, not {dataset.root}" if moved else f"{dataset.root} lacks most of them"
        raise PipelineError(
            f"{options.cache}: {plan.removed} of its {len(old)} images would be dropped ({cause}); "
            "pass --prune to drop them, or use another --cache for this data"
        )
    return []


def run_extract(options: ExtractOptions) -> ExtractReport:
    """Bring ``options.cache`` up to date with the images in ``options.data``."""
    started = time.perf_counter()
    _check_options(options)
    dataset = discover(options.data)
    max_pixels = DEFAULT_MAX_PIXELS if options.max_pixels is None else options.max_pixels
    spec = ResizeSpec(options.image_size, options.resize, options.interpolation, max_pixels)
    request = _request_fingerprint(options)
    try:
        with exclusive_writer(options.cache):
            report = _nothing_to_do(options, dataset, spec, request, started) or _update(options, dataset, spec, request, started)
            return dataclasses.replace(report, reading=dataset.reading)
    except CacheError as error:
        raise PipelineError(str(error)) from None
