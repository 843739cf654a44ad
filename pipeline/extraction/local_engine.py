"""``extract --engine local``: decode -> model -> shard writer on this machine, each stage
overlapping the next (decoding runs ahead in workers, the model's results are copied and
written on the writer's thread)."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING

from features_cache import schema
from features_cache.ownership import Owner
from features_cache.shards import Shard
from pipeline import progress
from pipeline.extraction.images import ResizeSpec
from pipeline.extraction.loader import LoadTask, iter_batches
from pipeline.extraction.options import ExtractOptions
from pipeline.extraction.shard_writer import ShardWriter

if TYPE_CHECKING:
    from pipeline.extraction.backbones import Backbone


def extract_locally(
    backbone: Backbone, todo: list[LoadTask], spec: ResizeSpec, options: ExtractOptions, recipe: schema.Recipe,
    index_rows: int = 0, owner: Owner | None = None,
) -> tuple[list[Shard], float]:
    """Run the model over ``todo`` into new shards; returns them and the seconds it took.

    ``index_rows`` (the rows the commit will index) sizes the message of a full disk."""
    started = time.perf_counter()
    writer = ShardWriter(Path(options.cache), recipe, backbone.feature_shape, backbone.to_numpy,
                         remaining_rows=len(todo), index_rows=index_rows, shard_rows=options.shard_rows,
                         compression=options.compression, owner=owner)
    schema.shards_dir(options.cache).mkdir(exist_ok=True)
    backbone.expect(len(todo))
    if recipe.decoder == schema.PILLOW:
        batches = iter_batches(todo, spec, options.batch_size, options.workers, decoder=options.decoder)
    else:
        from pipeline.extraction.device_decode import iter_device_batches

        batches = iter_device_batches(todo, spec, options.batch_size, options.workers)
    # closed here, never by the garbage collector: its clean-up joins decoding threads, and a collection
    # that runs inside threading's own locks (a thread starting elsewhere) would then wait on itself forever
    try:
        with closing(batches), progress.bar("extracting", total=len(todo)) as advance:
            for batch in batches:
                # dispatched, not awaited: the next batch is decoded and sent while this one runs
                features = backbone.predict(backbone.to_device(batch.images)) if batch.count else None
                writer.put(features, batch.count, batch.records, batch.skipped)
                advance(batch.count + len(batch.skipped))
    finally:
        writer.close()
    return writer.written, time.perf_counter() - started
