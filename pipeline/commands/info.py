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
    views = cached_views(args.cache)
    if views:
        print(f"  views: {', '.join(views)} (each a cache beside it, e.g. {view_cache(args.cache, views[0]).name})")
    return 0
