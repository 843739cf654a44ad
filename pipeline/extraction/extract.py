"""Stage one: images to a feature cache, incrementally, resumably, and never silently wrong.

A run reads top to bottom: (1) check the options and find the images; (2) if the request
is the one the cache's recipe was checked for and no image needs extracting, write at most a
new index (a relabel, an exclusion) without building the model; else
(3) build the backbone and its recipe, (4) plan per image what is already cached
(:mod:`~pipeline.extraction.plan`), (5) extract the rest into new immutable shards on the
local or the Ray engine, (6) replace the small index atomically and delete shards no row
refers to (:mod:`~pipeline.extraction.commit`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from features_cache import ownership, schema
from features_cache.errors import CacheError
from features_cache.faults import checkpoint
from features_cache.lock import exclusive_writer
from features_cache.ownership import Owner
from features_cache.reader import FeatureCache
from features_cache.records import SkippedFile
from features_cache.shards import Shard, collect_garbage, finish_clean_up, remove_temporaries
from pipeline.errors import PipelineError
from pipeline.extraction import plan as planning
from pipeline.extraction.commit import commit, index_rows, unchanged
from pipeline.extraction.images import BACKGROUND, DEFAULT_MAX_PIXELS, ResizeSpec, skip_conditions
from pipeline.extraction.options import (
    ExtractOptions,
    auto_precision,
    check_options,
    pixel_decoder,
    request_fingerprint,
)
from pipeline.extraction.sources import Dataset, discover
from pipeline.extraction.views import describe

__all__ = ["ExtractOptions", "ExtractReport", "run_extract"]


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


def run_extract(options: ExtractOptions) -> ExtractReport:
    """Bring ``options.cache`` up to date with the images in ``options.data``."""
    started = time.perf_counter()
    check_options(options)
    if options.engine == "ray":
        from pipeline.extraction.ray_engine import check_ray_options

        check_ray_options(options)
    dataset = discover(options.data)
    if options.only is not None:  # the plan then keeps, adds and drops rows against this subset alone
        dataset = dataclasses.replace(dataset, entries=[entry for entry in dataset.entries if entry.path in options.only])
    max_pixels = DEFAULT_MAX_PIXELS if options.max_pixels is None else options.max_pixels
    spec = ResizeSpec(options.image_size, options.resize, options.interpolation, max_pixels, options.view)
    request = request_fingerprint(options)
    try:
        with exclusive_writer(options.cache):
            cache_path = Path(options.cache)  # under the lock every temporary file's writer is dead
            folder = schema.shards_dir(cache_path)
            if folder.exists() and not folder.is_dir():
                rest = (f"copy the folder {folder.name} from where the index came from, beside it (the two move together), "
                        "or run `pipeline extract --force` to extract every image again"
                        if cache_path.exists() and not options.force else "run the same command again")
                raise PipelineError(f"{folder}: the shards folder of {cache_path} is not a folder; "
                                    f"move the file {folder.name} away (it is not part of the cache), then {rest}")
            try:
                remove_temporaries(cache_path.parent, f".{cache_path.name}.tmp-")
                remove_temporaries(folder)
                finish_clean_up(cache_path)
                planning.list_strays(cache_path)
                report = _without_model(options, dataset, spec, request, started) or _update(options, dataset, spec, request, started)
            finally:
                _remove_if_empty(cache_path)
            return dataclasses.replace(report, reading=dataset.reading)
    except CacheError as error:
        raise PipelineError(str(error)) from None


def _without_model(
    options: ExtractOptions, dataset: Dataset, spec: ResizeSpec, request: str, started: float
) -> ExtractReport | None:
    """The run, if it needs no model: nothing to extract, no orphan to check, and the request the
    one whose recipe the run that wrote the cache checked against the built model (same options,
    weights bytes, host, libraries). Then only the index changes (a relabel, an exclusion) or
    nothing does; anything else returns None for the full path, which checks the real recipe."""
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
        listed = {file.resolve() for file in [*cache.shard_files, *cache.segment_files]}
        if cache.version != schema.INDEX_VERSION or ownership.survey(path, listed, cache.owner).orphans:
            return None
        planned = planning.plan(dataset, cache, [], skip_conditions(spec))
        class_names, rows = index_rows(dataset, planned.ready)
        skipped = _skipped_in_order(dataset, planned)
        if planned.todo or not rows:
            return None
        if unchanged(cache, dataset, class_names, rows, skipped):
            return _report(path, planned, class_names, skipped, len(rows), started, 0.0, written=False)
        planning.check_drop(options, dataset, cache, planned)
        live = commit(path, cache.recipe, cache.feature_shape, dataset, class_names, rows, skipped, cache, [],
                      {"request": request, "tf32": str(cache.attrs.get("tf32", ""))},
                      {k: v for k, v in cache.attrs.items() if k.startswith("version.") or k == "keras_backend"})
    checkpoint("committed")
    collect_garbage(path, live)
    return _report(path, planned, class_names, skipped, len(rows), started, 0.0, written=True)


def _update(options: ExtractOptions, dataset: Dataset, spec: ResizeSpec, request: str, started: float) -> ExtractReport:
    """The full path: build the backbone, check the recipe, extract what is missing, commit."""
    loading = time.perf_counter()
    from pipeline.extraction.backbones import build_backbone, tf32_allowed

    cache_path = Path(options.cache)
    precision, notes = auto_precision(options)
    backbone = build_backbone(
        options.backbone, weights=options.weights, image_size=options.image_size, precision=precision,
        storage_dtype=options.storage_dtype, seed=options.seed, layer=options.layer,
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
        decoder=pixel_decoder(options, spec),
        layer=options.layer,
        view=describe(options.view) if options.view else "",
    )
    old = planning.open_existing(options, recipe)
    owner = Owner.after(old.attrs) if old is not None else Owner.new()
    live: set[Path] = set()
    try:
        adopted, rejected = planning.orphans(cache_path, old, recipe, options.force, options.keep_orphans)
        planned = planning.plan(dataset, old, adopted, skip_conditions(spec))
        checkpoint("planned")
        if old is not None:
            planning.check_drop(options, dataset, old, planned)
        new, extract_seconds = _extract(backbone, planned, spec, options, recipe, owner)
        planned.add_new_shards(new)
        class_names, rows = index_rows(dataset, planned.ready)
        skipped = _skipped_in_order(dataset, planned)
        if not rows:
            raise PipelineError(
                f"{options.data}: none of the {len(dataset.entries)} files could be read "
                f"(first: {skipped[0].path}: {skipped[0].reason}); check the files and run again"
            )
        written = (
            old is None
            or old.version != schema.INDEX_VERSION
            or bool(adopted or new)
            or not unchanged(old, dataset, class_names, rows, skipped)
        )
        if written:
            tf32 = {True: "allowed", False: "off", None: "not applicable (CPU)"}[tf32_allowed()]
            live = commit(cache_path, recipe, backbone.feature_shape, dataset, class_names, rows, skipped, old,
                          [*adopted, *new], {"request": request, "tf32": tf32}, owner=owner)
    finally:
        if old is not None:
            old.close()
    checkpoint("committed")
    kept = set(rejected) if options.keep_orphans else set()
    if written:
        collect_garbage(cache_path, live | {path.resolve() for path in kept})
    else:
        for path in set(rejected) - kept:
            path.unlink(missing_ok=True)
    report = _report(cache_path, planned, class_names, skipped, len(rows), started, extract_seconds, written)
    return dataclasses.replace(report, notes=tuple(notes), model_seconds=model_seconds)


def _extract(
    backbone, planned: planning.Plan, spec: ResizeSpec, options: ExtractOptions, recipe: schema.Recipe, owner: Owner,
) -> tuple[list[Shard], float]:
    """The planned images through the chosen engine into new shards written for ``owner`` (none when nothing is to do)."""
    if not planned.todo:
        return [], 0.0
    if options.engine == "ray":
        from pipeline.extraction.ray_engine import extract_on_ray

        return extract_on_ray(backbone, planned.todo, spec, options, recipe, owner)
    from pipeline.extraction.local_engine import extract_locally

    return extract_locally(backbone, planned.todo, spec, options, recipe, index_rows=len(planned.ready) + len(planned.todo),
                           owner=owner)


def _remove_if_empty(cache_path: Path) -> None:
    """A run that wrote nothing leaves nothing: the shards folder it made for a cache that has no index goes."""
    folder = schema.shards_dir(cache_path)
    if not cache_path.exists() and folder.is_dir() and not folder.is_symlink() and not any(folder.iterdir()):
        folder.rmdir()


def _skipped_in_order(dataset: Dataset, planned: planning.Plan) -> list[SkippedFile]:
    """Unreadable images in path order, then what the walk left out (loops, repeats, unstorable names)."""
    unreadable = [planned.skipped[e.path] for e in dataset.entries if e.path in planned.skipped]
    return unreadable + [planned.skipped[item.path] for item in dataset.left_out]


def _report(
    cache_path: Path,
    planned: planning.Plan,
    class_names: list[str],
    skipped: list[SkippedFile],
    n_rows: int,
    started: float,
    extract_seconds: float,
    written: bool,
) -> ExtractReport:
    return ExtractReport(
        cache=cache_path,
        n_images=n_rows,
        n_classes=len(class_names),
        extracted=planned.extracted,
        kept=n_rows - planned.extracted,
        removed=planned.removed,
        skipped=skipped,
        seconds=time.perf_counter() - started,
        extract_seconds=extract_seconds,
        written=written,
    )
