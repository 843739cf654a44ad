"""Stage one: images to a feature cache, incrementally, resumably, and never silently wrong.

A run (1) finds the images, (2) decides per image whether a live shard of the cache or
a shard an interrupted run left behind already holds its features (stat first, content
hash only where size or mtime changed), (3) extracts the rest batch by batch into new
immutable shards, (4) replaces the small index atomically, and (5) deletes shards that
no live row refers to.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

import h5py
import numpy as np

from features_cache import schema
from features_cache.errors import CacheError, no_space
from features_cache.faults import checkpoint
from features_cache.lock import exclusive_writer
from features_cache.reader import FeatureCache
from features_cache.records import FileRecord, FileStamp, SkippedFile, content_hash
from features_cache.shards import (
    Shard,
    collect_garbage,
    file_digest,
    new_shard_path,
    open_shard,
    remove_temporaries,
    write_shard,
)
from features_cache.writer import FeatureSource, Row, write_index
from pipeline import progress
from pipeline.errors import PipelineError
from pipeline.extraction.backbone_specs import check_backbone, cpu_flags, weights_path
from pipeline.extraction.images import BACKGROUND, DEFAULT_MAX_PIXELS, ResizeSpec, skip_conditions
from pipeline.extraction.loader import LoadTask, iter_batches, resolve_decoder
from pipeline.extraction.sources import Dataset, discover
from pipeline.versions import library_versions

if TYPE_CHECKING:
    from pipeline.extraction.backbones import Backbone

STORAGE_DTYPES = ("float16", "float32")
ENGINES = ("local", "ray")


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
    decoder: str = "auto"
    engine: str = "local"
    address: str | None = None
    gpus_per_worker: float = 0.0
    write_shards: str = "auto"
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
    model_seconds: float = 0.0  # importing Keras and building the backbone: the part no overlap hides

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
    if options.decoder != "gpu":
        resolve_decoder(options.decoder, options.workers or 1)
    if options.decoder == "gpu" and options.engine == "ray":
        raise PipelineError("--decoder gpu runs with the local engine; on Ray, workers decode on their CPUs")
    if options.engine not in ENGINES:
        raise PipelineError(f"unknown engine {options.engine!r}; use one of {', '.join(ENGINES)}")
    if options.engine == "ray":
        from pipeline.extraction.ray_engine import check_ray_options

        check_ray_options(options)
    cache = Path(options.cache)
    if cache.is_dir() and (not options.force or any(cache.iterdir())):
        raise PipelineError(f"--cache {cache}: is a folder, not a cache file; pass a file path, e.g. {cache / 'features.h5'}")
    parent = cache.resolve().parent
    if not parent.is_dir():
        raise PipelineError(f"{options.cache}: folder {parent} does not exist; create it or choose another --cache path")
    if not os.access(parent, os.W_OK):
        raise PipelineError(f"{options.cache}: folder {parent} is not writable; choose another --cache path")


def _open_existing(options: ExtractOptions, recipe: schema.Recipe) -> FeatureCache | None:
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


def _orphans(cache_path: Path, live: set[Path], recipe: schema.Recipe, force: bool) -> list[Shard]:
    """Shards no index lists (left by an interrupted run): verified and adopted, or deleted."""
    adopted = []
    for path in sorted(schema.shards_dir(cache_path).glob("shard-*.h5"), key=lambda p: p.stat().st_mtime_ns):
        if path.resolve() in live:
            continue
        if force:
            continue
        try:
            adopted.append(open_shard(path, recipe, read_features=True))
        except ValueError as error:
            print(f"{path}: {error}; its images will be extracted again", file=sys.stderr)
    return adopted


def _plan(dataset: Dataset, old: FeatureCache | None, orphans: list[Shard], conditions: str) -> _Plan:
    """Decide per image, reading file contents only where the stat fingerprint changed.

    A file skipped before is tried again when the skip may not hold under ``conditions``
    (another ``--max-pixels`` or Pillow version) or was a transient failure.
    """
    pending_ready: dict[str, tuple[FileRecord, FeatureSource]] = {}
    pending_skipped: dict[str, SkippedFile] = {}
    for shard in orphans:
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
    return _Plan(ready, skipped, todo, removed)


def _same_content(path: str, expected_hash: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return content_hash(handle.read()) == expected_hash
    except OSError:
        return False


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


def check_finite(features: np.ndarray, records: list[FileRecord]) -> None:
    """Refuse NaN or infinite features: they would poison every head trained on the cache."""
    bad = ~np.isfinite(features.reshape(len(features), -1)).all(axis=1)
    if bad.any():
        raise PipelineError(
            f"{records[int(np.flatnonzero(bad)[0])].path}: the backbone produced non-finite features; "
            "check the image and --precision (float32 avoids overflow), then run again"
        )


def _extract(backbone: Backbone, plan: _Plan, spec: ResizeSpec, options: ExtractOptions, recipe: schema.Recipe) -> tuple[list[Shard], float]:
    """Run the model over ``plan.todo`` into new shards; returns them and the seconds it took."""
    started = time.perf_counter()
    writer = ShardWriter(Path(options.cache), recipe, backbone.feature_shape, backbone.to_numpy)
    schema.shards_dir(options.cache).mkdir(exist_ok=True)
    backbone.expect(len(plan.todo))
    if recipe.decoder == schema.PILLOW:
        batches = iter_batches(plan.todo, spec, options.batch_size, options.workers, decoder=options.decoder)
    else:
        from pipeline.extraction.device_decode import iter_device_batches

        batches = iter_device_batches(plan.todo, spec, options.batch_size, options.workers)
    try:
        with progress.bar("extracting", total=len(plan.todo)) as advance:
            for batch in batches:
                # dispatched, not awaited: the next batch is decoded and sent while this one runs
                features = backbone.predict(backbone.to_device(batch.images)) if batch.count else None
                writer.put(features, batch.count, batch.records, batch.skipped)
                advance(batch.count + len(batch.skipped))
    finally:
        writer.close()
    return writer.written, time.perf_counter() - started


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
        "gpu_decoding": options.decoder == "gpu",  # threads or processes make the same pixels; the GPU does not
        "host": socket.gethostname(),
        "keras_backend": os.environ.get("KERAS_BACKEND", ""),
        "keras": _installed_version("keras"),
        "cpu_bfloat16": sorted(cpu_flags() & {"amx_bf16", "avx512_bf16"}),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


_NOT_IN_REQUEST = (
    "data", "cache", "workers", "decoder", "force", "prune", "batch_size", "engine", "address", "gpus_per_worker", "write_shards",
)


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
    if options.force or not path.exists():
        return None
    try:
        cache = FeatureCache(path)
    except CacheError:
        return None
    with cache:
        if cache.attrs.get("request") != request:
            return None
        live = {file.resolve() for file in cache.shard_files}
        if cache.version != schema.SCHEMA_VERSION or any(p.resolve() not in live for p in schema.shards_dir(path).glob("*")):
            return None
        plan = _plan(dataset, cache, [], skip_conditions(spec))
        class_names, rows = _rows(dataset, plan.ready)
        skipped = _skipped_in_order(dataset, plan)
        if plan.todo or not rows or not _unchanged(cache, dataset, class_names, rows, skipped):
            return None
    return _report(path, plan, class_names, rows, skipped, started, 0.0, written=False)


def _update(options: ExtractOptions, dataset: Dataset, spec: ResizeSpec, request: str, started: float) -> ExtractReport:
    """The full path: build the backbone, check the recipe, extract what is missing, write."""
    loading = time.perf_counter()
    from pipeline.extraction.backbones import build_backbone, tf32_allowed

    cache_path = Path(options.cache)
    precision, notes = _auto_precision(options)
    backbone = build_backbone(
        options.backbone,
        weights=options.weights,
        image_size=options.image_size,
        precision=precision,
        storage_dtype=options.storage_dtype,
        seed=options.seed,
    )
    model_seconds = time.perf_counter() - loading
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
        decoder=_pixel_decoder(options, spec),
    )
    remove_temporaries(cache_path.parent, f".{cache_path.name}.tmp-")
    remove_temporaries(schema.shards_dir(cache_path))
    old = _open_existing(options, recipe)
    try:
        live = {file.resolve() for file in old.shard_files} if old is not None else set()
        orphans = _orphans(cache_path, live, recipe, options.force)
        plan = _plan(dataset, old, orphans, skip_conditions(spec))
        checkpoint("planned")
        if old is not None:
            _check_drop(options, dataset, old, plan)
        extract_seconds = 0.0
        new: list[Shard] = []
        if plan.todo:
            if options.engine == "ray":
                from pipeline.extraction.ray_engine import extract_on_ray

                new, extract_seconds = extract_on_ray(backbone, plan.todo, spec, options, recipe)
            else:
                new, extract_seconds = _extract(backbone, plan, spec, options, recipe)
            todo = {task.path for task in plan.todo}
            for shard in new:
                for index, record in enumerate(shard.records):
                    if record.path in todo:
                        plan.ready[record.path] = (record, FeatureSource(str(shard.path), index))
                plan.skipped.update({item.path: item for item in shard.skipped if item.path in todo})
        class_names, rows = _rows(dataset, plan.ready)
        skipped = _skipped_in_order(dataset, plan)
        if not rows:
            raise PipelineError(
                f"{options.data}: none of the {len(dataset.entries)} files could be read "
                f"(first: {skipped[0].path}: {skipped[0].reason}); check the files and run again"
            )
        written = (
            old is None
            or old.version != schema.SCHEMA_VERSION
            or bool(orphans or new)
            or not _unchanged(old, dataset, class_names, rows, skipped)
        )
        if written:
            rows = _into_shards(cache_path, recipe, rows, backbone.feature_shape)
            table = _shard_table(cache_path, rows, old, [*orphans, *new])
            attrs = {
                "data_root": str(dataset.root),
                "source_kind": dataset.kind,
                "created_at": old.attrs.get("created_at", _now()) if old else _now(),
                "request": request,
                "tf32": {True: "allowed", False: "off", None: "not applicable (CPU)"}[tf32_allowed()],
                **library_versions(),
            }
            try:
                write_index(cache_path, recipe=recipe, feature_shape=backbone.feature_shape, class_names=class_names,
                            rows=rows, skipped=skipped, attrs=attrs, shards=table)
            except OSError as error:
                raise PipelineError(str(no_space(cache_path.parent, (1 << 20) + 200 * len(rows), error))) from None
    finally:
        if old is not None:
            old.close()
    checkpoint("committed")
    if written:
        collect_garbage(cache_path, {cache_path.parent.resolve() / name for name, *_ in table})
    report = _report(cache_path, plan, class_names, rows, skipped, started, extract_seconds, written)
    return dataclasses.replace(report, notes=tuple(notes), model_seconds=model_seconds)


def _pixel_decoder(options: ExtractOptions, spec: ResizeSpec) -> str:
    """What makes the pixels, for the recipe: Pillow, or the GPU decoder (``--decoder gpu``, or
    ``auto`` on a CUDA machine where it runs, unless an existing cache was made with Pillow)."""
    if options.decoder not in ("gpu", "auto") or options.engine != "local":
        return schema.PILLOW
    from pipeline.extraction import device_decode
    reason = device_decode.unavailable(spec)
    if options.decoder == "gpu":
        if reason:
            raise PipelineError(f"--decoder gpu: {reason}; or use --decoder auto")
        return device_decode.decoder_label()
    if reason or device_decode.device_name() != "cuda":
        return schema.PILLOW
    try:
        with FeatureCache(options.cache) as cache:
            if cache.recipe.decoder == schema.PILLOW and not options.force:
                return schema.PILLOW  # a cache is never split between decoders by auto
    except CacheError:
        pass
    return device_decode.decoder_label()


def _auto_precision(options: ExtractOptions) -> tuple[str, list[str]]:
    """``auto`` on an existing cache keeps the cache's precision, so the machine never splits a cache.

    Every precision runs on every machine (bfloat16 is emulated on CPUs without AMX, only
    slower); choosing by machine would refuse a bfloat16 cache on a float32 laptop.
    """
    if options.precision != "auto" or options.force:
        return options.precision, []
    try:
        with FeatureCache(options.cache) as cache:
            precision = cache.recipe.precision
    except CacheError:
        return options.precision, []
    return precision, [f"precision auto: {precision}, the precision {options.cache} was made with"]


def _check_drop(options: ExtractOptions, dataset: Dataset, old: FeatureCache, plan: _Plan) -> None:
    """Refuse a run that would silently drop much of the cache: another data folder, or most rows gone."""
    if options.prune or options.force or not plan.removed:
        return  # a moved data folder whose images are all found drops nothing
    if str(old.data_root) and str(old.data_root) != str(dataset.root):
        raise PipelineError(
            f"{options.cache} was made from {old.data_root}, not {dataset.root}; rows of images not in "
            "the new folder would be dropped: pass --prune to drop them, or another --cache"
        )
    if plan.removed * 2 > len(old):
        raise PipelineError(
            f"{options.cache}: {plan.removed} of its {len(old)} images are no longer in {dataset.root}; "
            "pass --prune to drop their rows, or check the data folder"
        )


def _into_shards(cache_path: Path, recipe: schema.Recipe, rows: list[Row], feature_shape: tuple[int, ...]) -> list[Row]:
    """Copy rows whose features are not in a shard (a version-1 cache being upgraded) into new shards."""
    folder = schema.shards_dir(cache_path).resolve()
    outside = [i for i, row in enumerate(rows) if Path(row.source.file).resolve().parent != folder]
    if not outside:
        return rows
    folder.mkdir(exist_ok=True)
    rows = list(rows)
    per_shard = max(1, schema.chunk_rows(feature_shape, np.dtype(recipe.storage_dtype).itemsize) * 16)
    for start in range(0, len(outside), per_shard):
        part = outside[start : start + per_shard]
        with h5py.File(rows[part[0]].source.file, "r") as f:
            features = np.stack([f[schema.FEATURES][rows[i].source.index] for i in part])
        path = new_shard_path(cache_path)
        try:
            write_shard(path, recipe, features, [rows[i].record for i in part], [])
        except OSError as error:
            raise PipelineError(str(no_space(folder, features.nbytes, error))) from None
        for n, i in enumerate(part):
            rows[i] = dataclasses.replace(rows[i], source=FeatureSource(str(path), n))
    return rows


def _shard_table(cache_path: Path, rows: list[Row], old: FeatureCache | None, known: list[Shard]) -> list[tuple[str, int, int, str]]:
    """``(relative file, rows, bytes, digest)`` of every shard a row refers to, in first-use order."""
    facts: dict[Path, tuple[int, str]] = {}
    if old is not None and old.version == schema.SCHEMA_VERSION:
        facts = {f.resolve(): (size, digest) for f, size, digest in zip(old.shard_files, old.shard_sizes, old.shard_digests)}
    facts.update({shard.path.resolve(): (shard.size, shard.digest) for shard in known})
    folder = cache_path.parent.resolve()
    table: dict[Path, tuple[str, int, int, str]] = {}
    for row in rows:
        file = Path(row.source.file).resolve()
        if file not in table:
            size, digest = facts.get(file) or (file.stat().st_size, file_digest(file))
            with h5py.File(file, "r") as f:
                count = len(f[schema.FEATURES])
            table[file] = (os.path.relpath(file, folder), count, size, digest)
    return list(table.values())


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
