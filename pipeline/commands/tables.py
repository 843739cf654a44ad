"""What the commands print: short, plain, and the same on a terminal and in a log."""

from __future__ import annotations

import collections
from pathlib import Path

from rich.table import Table

from features_cache import schema
from features_cache.reader import FeatureCache
from pipeline.commands.output import make_console
from pipeline.extraction.extract import ExtractReport

console = make_console()


def print_extract_report(report: ExtractReport) -> None:
    rate = f", {report.images_per_second:.1f} img/s" if report.extracted else ""
    state = "written" if report.written else "unchanged"
    if report.reading:
        console.print(f"read as {report.reading}")
    console.print(
        f"{report.cache}: {report.n_images} images in {report.n_classes} classes, {state} "
        f"({report.extracted} extracted, {report.kept} kept, {report.removed} removed, "
        f"{len(report.skipped)} skipped) in {report.seconds:.1f} s{rate}"
        + (f"; {report.model_seconds:.1f} s of it loading Keras and the model" if report.model_seconds else "")
    )
    for item in report.skipped:
        console.print(f"  skipped {item.path}: {item.reason}")
    for note in report.notes:
        console.print(note)


def print_cache_info(cache: FeatureCache) -> None:
    recipe = cache.recipe
    size_mib = cache.disk_bytes / 2**20
    console.print(f"{cache.path}  ({size_mib:.1f} MiB on disk, identity {cache.identity})")
    console.print(
        f"  {len(cache)} images, {len(cache.class_names)} classes, features {cache.feature_shape} {cache.storage_dtype}"
    )
    console.print(
        f"  backbone {recipe.backbone}, weights {recipe.weights} (sha256 {recipe.weights_sha256[:12]}), "
        f"input {recipe.image_size}x{recipe.image_size}, preprocessing {recipe.preprocessing}, "
        f"resize {recipe.resize}/{recipe.interpolation}, decoder {recipe.decoder}, precision {recipe.precision}, "
        f"layer {recipe.layer}" + (f", view {recipe.view}" if recipe.view else "")
    )
    console.print(
        f"  data root {cache.attrs.get('data_root')} ({cache.attrs.get('source_kind')}), "
        f"created {cache.attrs.get('created_at')}, written {cache.attrs.get('written_at')}, "
        f"keras {cache.attrs.get('version.keras')} on {cache.attrs.get('keras_backend')}"
    )
    counts = collections.Counter(zip(cache.labels.tolist(), cache.splits.tolist()))
    splits = sorted({split for _, split in counts}, key=lambda s: ("train", "val", "test", "").index(s))
    table = Table(show_edge=False)
    table.add_column("class")
    for split in splits:
        table.add_column(split or "images", justify="right")
    for index, name in enumerate(cache.class_names):
        table.add_row(name, *(str(counts.get((index, split), 0)) for split in splits))
    console.print(table)
    _print_storage(cache)
    skipped = cache.skipped()
    if skipped:
        console.print(f"  {len(skipped)} skipped files:")
        for item in skipped:
            console.print(f"    {item.path}: {item.reason}")


LARGE_CACHE_BYTES = 10 * 10**9  # where halving the disk starts to matter more than 0.3 ms an image


def _print_storage(cache: FeatureCache) -> None:
    """Shards and how they store features; where they were found if the cache was moved; gzip for large caches."""
    if cache.version not in schema.SHARDED_VERSIONS:
        return
    kinds = collections.Counter(cache.shard_compression)
    segments = f", {len(cache.segment_files)} segments of row metadata" if cache.version == schema.INDEX_VERSION else ""
    console.print(f"  {len(cache.shard_files)} shards ({', '.join(f'{n} {kind}' for kind, n in sorted(kinds.items()))}){segments}")
    if cache.relocated:
        folder = cache.path.resolve().parent
        found, recorded = next(((file, Path(name)) for file, name in zip(cache.shard_files, cache.recorded_files)
                                if file != folder / name), (cache.shard_files[0], Path(cache.recorded_files[0])))
        see = f"read the copies in {recorded.parent}" if (folder / recorded).is_file() else "see NaN rows"
        console.print(
            f"  shards found in {found.parent} (the index names {recorded.parent}): "
            f"plain HDF5 readers {see} until `pipeline verify --repair {cache.path}` records where they are"
        )
    if cache.disk_bytes > LARGE_CACHE_BYTES and kinds.get("gzip", 0) < len(cache.shard_files):
        console.print(
            "  tip: `extract --compression gzip` stores new shards in about half the space on real features "
            "(readable by every HDF5 reader; reads cost about 0.3 ms more an image); `compact --compression gzip` "
            "rewrites the existing ones"
        )
