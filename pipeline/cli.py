"""``python -m pipeline <command>``: one module per command under ``pipeline.commands``."""

from __future__ import annotations

import argparse
import importlib
import sys

from features_cache.errors import CacheError
from pipeline.errors import PipelineError

COMMANDS = ("extract", "info", "train", "runs", "evaluate", "report", "audit", "predict", "export", "verify", "compact")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline", description="Extract CNN codes once into an HDF5 cache, then train cheap heads on them."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"pipeline.commands.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (PipelineError, CacheError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished batches are kept; run the same command again to resume", file=sys.stderr)
        return 130
