"""``pipeline info CACHE.h5``: what a cache holds and how it was made."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("info", help="show what a feature cache holds and how it was made")
    parser.add_argument("cache", help="an HDF5 feature cache written by `pipeline extract`")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from features_cache.reader import FeatureCache
    from pipeline.commands.tables import print_cache_info
    from pipeline.extraction.views import cached_views, view_cache

    with FeatureCache(args.cache) as cache:
        print_cache_info(cache)
        for line in folder_notes(cache):
            print(f"  {line}")
    views = cached_views(args.cache)
    if views:
        print(f"  views: {', '.join(views)} (each a cache beside it, e.g. {view_cache(args.cache, views[0]).name})")
    return 0


def folder_notes(cache) -> list[str]:
    """What the cache's shards folder holds besides the cache's files: counted, with bytes, and whose."""
    from features_cache import ownership, schema

    if cache.version not in schema.SHARDED_VERSIONS:
        return []
    listed = {file.resolve() for file in [*cache.shard_files, *cache.segment_files]}
    return ownership.describe(ownership.survey(cache.path, listed, cache.owner))
