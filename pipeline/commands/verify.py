"""``pipeline verify CACHE``: read every byte of a cache and name what is damaged."""

from __future__ import annotations

import argparse
import sys


def register(subparsers) -> None:
    parser = subparsers.add_parser("verify", help="check every shard of a feature cache and name what is damaged")
    parser.add_argument("cache", help="an HDF5 feature cache written by `pipeline extract`")
    parser.add_argument("--repair", action="store_true", help="delete damaged shards, so the next extract redoes their images; or record where moved shards are now")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from features_cache.reader import FeatureCache
    from features_cache.relocate import relocate, unseen
    from features_cache.verify import damage
    from pipeline.commands.info import folder_notes
    from pipeline.extraction.views import cached_views, view_cache

    problems = damage(args.cache)
    for view in cached_views(args.cache):  # the views beside it are part of it
        problems.extend(damage(view_cache(args.cache, view)))
    for file, reason in problems:
        print(f"{file}: {reason}", file=sys.stderr)
        if args.repair:
            file.unlink(missing_ok=True)
    moved = [] if problems else unseen(args.cache)
    for file, reason in moved:
        print(f"{file}: {reason}", file=sys.stderr)
    if moved and args.repair and relocate(args.cache):
        print(f"{args.cache}: recorded where its {len(moved)} moved shards are now; every HDF5 reader finds them again")
        return 0
    if not problems and not moved:
        views = cached_views(args.cache)
        print(f"{args.cache}: ok" + (f" (and its views {', '.join(views)})" if views else ""))
        with FeatureCache(args.cache) as cache:
            for line in folder_notes(cache):
                print(line)
        return 0
    if moved:
        print(f"{args.cache}: {len(moved)} shards not found by plain HDF5 readers; run `pipeline verify --repair` to record where they are", file=sys.stderr)
        return 1
    fix = "deleted them" if args.repair else "run `pipeline verify --repair` to delete them"
    print(f"{args.cache}: {len(problems)} damaged; {fix}, then `pipeline extract` again to redo their images", file=sys.stderr)
    return 1
