"""``pipeline evaluate RUN CACHE.h5``: score a trained run on another cache made the same way."""

from __future__ import annotations

import argparse

SPLIT_CHOICES = ("all", "train", "val", "test")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a trained run on another feature cache (e.g. new test photos)",
        description="Score a run's head on a cache made with the same recipe; a cache made another way is refused.",
    )
    parser.add_argument("run_ref", metavar="RUN", help="a run folder, or a run's name under --runs-dir")
    parser.add_argument("cache", help="an HDF5 feature cache made the same way as the run's")
    parser.add_argument("--split", default="all", choices=SPLIT_CHOICES, help="stored split to score (default all)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--out", default=None, help="predictions CSV (default RUN/evaluate-<cache>.csv)")
    parser.add_argument(
        "--include-seen", action="store_true",
        help="score images with the content of the run's training images apart, instead of refusing the cache",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.tables import console
    from pipeline.errors import check_output_file
    from pipeline.training.evaluate import run_evaluate

    if args.out:
        check_output_file(args.out, "--out")
    result = run_evaluate(args.run_ref, args.cache, args.runs_dir, args.split, args.out, include_seen=args.include_seen)
    metrics = result.metrics
    console.print(
        f"{result.run_dir.name} on {result.cache} ({result.split}): {metrics['n']} images, "
        f"accuracy {metrics['accuracy']:.3f}, macro F1 {metrics['macro_f1']:.3f}, log loss {metrics['log_loss']:.3f}"
    )
    if result.seen_metrics:
        seen = result.seen_metrics
        console.print(
            f"  and apart, {seen['n']} training images of the run (same content): accuracy {seen['accuracy']:.3f}; "
            "not counted above"
        )
    console.print(f"wrote {result.out}")
    return 0
