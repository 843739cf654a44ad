"""``pipeline compact CACHE [--to FILE]``: reclaim rows of removed images, or write one file to share."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser("compact", help="rewrite a cache's live rows into fresh shards, or into one file")
    parser.add_argument("cache", help="an HDF5 feature cache written by `pipeline extract`")
    parser.add_argument("--to", default=None, help="write one standalone HDF5 file here instead (the cache is unchanged)")
    parser.add_argument(
        "--compression", default=None, choices=("none", "gzip"),
        help="how the rewritten shards store features (default: as most of the cache's shards do)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from features_cache.compact import compact
    from pipeline.extraction.views import cached_views, view_cache

    print(f"wrote {compact(args.cache, args.to, args.compression)}")
    if args.to is None:  # the views beside it are compacted with it; --to shares the original alone
        for view in cached_views(args.cache):
            print(f"wrote {compact(view_cache(args.cache, view), None, args.compression)}")
    return 0
