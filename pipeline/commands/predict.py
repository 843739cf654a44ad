"""``pipeline predict RUN IMAGES...``: classify new images with a run's backbone and head."""

from __future__ import annotations

import argparse

from pipeline.errors import PipelineError, check_output_file


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify new images (files or folders) with a trained run; writes a CSV of probabilities",
        description="Rebuild the run's frozen backbone from its cache recipe (weights checked by hash), run it and the "
        "run's head over the images, and write path,predicted,confidence,p_<class>... rows. Bad files are skipped.",
    )
    parser.add_argument("run_ref", metavar="RUN", help="a run folder, or a run's name under --runs-dir")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    parser.add_argument("--runs-dir", default="runs", help="where named runs live (default runs)")
    parser.add_argument(
        "--weights", default=None,
        help="backbone weights: imagenet, a .h5 path or random(seed=N); default: what the run's cache was made with",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per model call (default 32)")
    parser.add_argument("--workers", type=int, default=None, help="decoding threads (default: one per core)")
    parser.add_argument(
        "--max-pixels", type=int, default=None,
        help="decompression-bomb limit in pixels, as given to extract (default: Pillow's, about 89 million)",
    )
    parser.add_argument("--top", type=int, default=20, help="rows printed (default 20)")
    parser.add_argument(
        "--include-seen", action="store_true",
        help="also score images with the content of the run's training images, marked in a seen_in_training column",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.extraction.images import DEFAULT_MAX_PIXELS
    from pipeline.serving.predict import load_run_model, run_predict

    if args.batch_size < 1:
        raise PipelineError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.workers is not None and args.workers < 1:
        raise PipelineError(f"--workers must be at least 1, got {args.workers}")
    if args.max_pixels is not None and args.max_pixels < 1:
        raise PipelineError(f"--max-pixels must be a positive number of pixels, got {args.max_pixels}")
    check_output_file(args.out, "--out")
    model = load_run_model(args.run_ref, args.runs_dir, args.weights)
    result = run_predict(model, args.images, args.out, args.batch_size, args.workers, include_seen=args.include_seen,
                         max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS)
    print_predictions(result, args.top)
    if not result.paths:
        first = result.skipped[0]
        raise PipelineError(
            f"none of the {len(result.skipped)} files could be read (first: {first.path}: {first.reason}); "
            "check the files and run again"
        )
    return 0


def print_predictions(result, top: int) -> None:
    from rich.table import Table

    from pipeline.commands.output import make_console

    console = make_console()
    for note in result.notes:
        console.print(f"note: {note}", soft_wrap=True)
    table = Table(show_edge=False)
    for column in ("path", "predicted", "confidence"):
        table.add_column(column)
    for path, row in list(zip(result.paths, result.probabilities))[:top]:
        best = int(row.argmax())
        table.add_row(path, result.class_names[best], f"{row[best]:.1%}")
    if result.paths:
        console.print(table)
    if len(result.paths) > top:
        console.print(f"... and {len(result.paths) - top} more in {result.out}")
    rate = len(result.paths) / result.seconds if result.seconds else 0.0
    console.print(
        f"{result.out}: {len(result.paths)} images predicted, {len(result.skipped)} skipped "
        f"in {result.seconds:.1f} s ({rate:.1f} img/s)"
    )
    for item in result.skipped:
        console.print(f"  skipped {item.path}: {item.reason}")
    if any(result.seen):
        console.print(f"  {sum(result.seen)} of them are training images of the run (seen_in_training true in {result.out})")
