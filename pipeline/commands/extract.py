"""``pipeline extract DATA --cache CACHE.h5``: stage one."""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING

from features_cache.schema import EXTRACT_SHARD_ROWS as SHARD_ROWS
from features_cache.schema import EXTRACT_SHARD_SECONDS as SHARD_SECONDS
from pipeline.errors import PipelineError

if TYPE_CHECKING:
    from features_cache.reader import FeatureCache


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="run a frozen backbone over a folder of images into an HDF5 feature cache",
        description="Extract CNN codes into an HDF5 cache. Re-runs only process new or changed images; "
        "an interrupted run resumes where it stopped.",
    )
    parser.add_argument("data", help="folder of class folders (optionally under train/ val/ test/), or a path,label[,split] CSV")
    parser.add_argument("--cache", required=True, help="the HDF5 file to create or update")
    parser.add_argument("--backbone", default="vgg16", help="vgg16 (default), resnet50 or mobilenetv2")
    parser.add_argument(
        "--weights", default=None,
        help="imagenet, none (seeded random, for tests) or a .h5 path; default: the weights file an existing cache "
        "was made with (checked by its hash), else imagenet",
    )
    parser.add_argument("--image-size", type=int, default=224, help="square input size (default 224: 7x7x512 for VGG16)")
    parser.add_argument(
        "--layer", default="output",
        help="the backbone layer to cache (default output: block5_pool for VGG16); block4_pool lets `train --head finetune` "
        "fine-tune VGG16's top block",
    )
    parser.add_argument(
        "--views", default=None, metavar="VIEW[,VIEW...]",
        help="also cache augmented views of every image, once: flip, crop1..crop9 (seeded crops); "
        "each is a cache beside CACHE (CACHE.view-flip.h5) that `train --views` draws from",
    )
    parser.add_argument(
        "--views-of", default="all", choices=("all", "train"),
        help="which images get views: all (default), or train: only those `train --split` trains on (the split is "
        "decided and remembered now, as train does), since nothing else ever reads a view",
    )
    parser.add_argument(
        "--split", default=None, metavar="TRAIN,VAL,TEST",
        help="with --views-of train: the shares `train --split` will use (default 0.7,0.15,0.15)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    parser.add_argument(
        "--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
        help="compute precision; auto is bfloat16 on a GPU or an AMX CPU, else float32",
    )
    parser.add_argument("--storage", default="float16", choices=("float16", "float32"), help="dtype stored in the cache")
    parser.add_argument("--resize", default="stretch", choices=("stretch", "crop"), help="stretch to the square (Keras default) or centre-crop")
    parser.add_argument("--interpolation", default="bilinear", choices=("bilinear", "bicubic", "lanczos", "nearest", "area"))
    parser.add_argument("--max-pixels", type=int, default=None, help="refuse images larger than this (decompression-bomb guard)")
    parser.add_argument("--workers", type=int, default=None, help="decoding workers (default: one per core); with --engine ray, model workers (default 1)")
    parser.add_argument(
        "--decoder", default="auto", choices=("auto", "threads", "processes", "gpu"),
        help="decode in threads, in processes writing to shared memory, or JPEGs on the GPU (torch backend, "
        "torchvision); auto: the GPU where it runs, else threads below 8 workers",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for --weights none")
    parser.add_argument(
        "--compression", default="none", choices=("none", "gzip"),
        help="store new shards' features with gzip level 1 + shuffle (about half the disk on real features, "
        "readable by every HDF5 reader; reads cost about 0.3 ms more an image); shards of both kinds mix in one cache",
    )
    parser.add_argument(
        "--shard-rows", type=int, default=SHARD_ROWS,
        help=f"images per shard (default {SHARD_ROWS}; a shard is also written after {SHARD_SECONDS:g} s of work): "
        "what a kill can lose at most",
    )
    cluster = parser.add_argument_group("on a Ray cluster (pip install 'cnn-codes-pipeline[distributed]')")
    cluster.add_argument("--engine", default="local", choices=("local", "ray"), help="local (default) or ray")
    cluster.add_argument("--address", default=None, help="Ray cluster to join: auto (the one `ray start` made) or ray://host:port; default: start a local one")
    cluster.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each model worker holds (default 0)")
    cluster.add_argument(
        "--write-shards", default="auto", choices=("auto", "workers", "driver"),
        help="who writes shards: workers that can see the cache's folder (auto), always workers, or the driver",
    )
    parser.add_argument("--force", action="store_true", help="rebuild a cache made with other settings")
    parser.add_argument(
        "--prune", action="store_true",
        help="allow dropping cached images missing from DATA when DATA is another folder or most of them are gone",
    )
    parser.add_argument(
        "--keep-orphans", action="store_true",
        help="keep unindexed shards that cannot be adopted (made with other settings, damaged) instead of deleting them",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.tables import print_extract_report
    from pipeline.extraction.extract import ExtractOptions, run_extract
    from pipeline.extraction.options import default_weights
    from pipeline.extraction.views import parse_views, view_cache

    if args.weights is None:
        weights, note = default_weights(args.cache, args.force)
        if note:
            print(note, flush=True)
    else:
        weights = "none" if args.weights.lower() in ("none", "random") else args.weights
    views = parse_views(args.views)
    if args.views_of == "train" and not views:
        raise PipelineError("--views-of train says which images get views; add --views, e.g. --views flip")
    if args.split is not None and args.views_of != "train":
        raise PipelineError("--split decides which images get views; add --views-of train (train itself takes --split)")
    if args.workers is not None and args.workers < 1:
        raise PipelineError(f"--workers must be at least 1, got {args.workers}")
    options = ExtractOptions(
        data=args.data,
        cache=args.cache,
        backbone=args.backbone.lower(),
        weights=weights,
        image_size=args.image_size,
        batch_size=args.batch_size,
        precision=args.precision,
        storage_dtype=args.storage,
        resize=args.resize,
        interpolation=args.interpolation,
        max_pixels=args.max_pixels,
        workers=args.workers,
        decoder=args.decoder,
        engine=args.engine,
        address=args.address,
        gpus_per_worker=args.gpus_per_worker,
        write_shards=args.write_shards,
        seed=args.seed,
        force=args.force,
        prune=args.prune,
        keep_orphans=args.keep_orphans,
        layer=args.layer,
        compression=args.compression,
        shard_rows=args.shard_rows,
    )
    print_extract_report(run_extract(options))
    if views:
        from features_cache.reader import FeatureCache

        with FeatureCache(args.cache) as cache:  # the views are made exactly as the original, only their pixels differ
            options = dataclasses.replace(options, precision=cache.recipe.precision)  # --force rebuilds every view too
            if args.views_of == "train":
                options = dataclasses.replace(options, only=_training_paths(cache, args.split))
    for view in views:  # each view is a cache of its own, incremental and resumable like the original
        print(f"view {view}:", flush=True)
        print_extract_report(run_extract(dataclasses.replace(options, cache=str(view_cache(args.cache, view)), view=view)))
    return 0


def _training_paths(cache: FeatureCache, split: str | None) -> frozenset[str]:
    """The training images' paths by the split ``train --split`` will use, decided and remembered now."""
    from pipeline.training.splits import DEFAULT_FRACTIONS, parse_fractions
    from pipeline.training.views import training_paths

    fractions = DEFAULT_FRACTIONS if split is None else parse_fractions(split)
    paths, notes = training_paths(cache, fractions)
    print(f"views of the {len(paths)} training images of {len(cache)}; " + "; ".join(notes), flush=True)
    return paths
