"""``pipeline report RUN [--split test|val]``: the run's misclassified images, as a list, a CSV and a page."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report",
        help="list a run's misclassified images and write errors.csv and report.html into its folder",
        description="Misclassified images of a trained run, most confident mistakes first, with per-class error "
        "counts; writes errors.csv and a self-contained report.html (thumbnails, confusion matrix, metrics).",
    )
    parser.add_argument(
        "run_ref", metavar="RUN", nargs="?", default=None,
        help="a run folder, or a run's name under --runs-dir (default: the latest run)",
    )
    parser.add_argument(
        "--split", default=None, choices=("test", "val"),
        help="which held-out images (default test, or val when the run has no test split)",
    )
    parser.add_argument("--runs-dir", default="runs", help="where named runs live (default runs)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.analysis.report import build_report, latest_run

    run_ref = args.run_ref
    if not run_ref:
        run_ref = latest_run(args.runs_dir)
        print(f"report of the latest run, {run_ref} (pass RUN=<name> for another)", flush=True)
    print_report(build_report(run_ref, args.split, args.runs_dir))
    return 0


def print_report(report) -> None:
    from rich.table import Table

    from pipeline.analysis.report import summary_line
    from pipeline.commands.output import make_console

    console = make_console()
    table = Table(show_edge=False, title=f"misclassified {report.split} images, most confident first")
    for column in ("path", "true", "predicted", "confidence", "runner-up"):
        table.add_column(column, justify="right" if column == "confidence" else "left")
    for m in report.mistakes:
        table.add_row(m.path, m.true, m.predicted, f"{m.confidence:.1%}", f"{m.runner_up} ({m.runner_up_probability:.1%})")
    if report.mistakes:
        console.print(table)
    for m in report.mistakes:
        if not m.absolute.exists():
            console.print(f"  {m.path}: image not found at {m.absolute}")
    console.print(summary_line(report))
    for warning in report.warnings:
        console.print(warning)
    console.print("errors per true class: " + ", ".join(f"{name} {n}" for name, n in report.errors_per_class().items()))
    console.print(f"wrote {report.errors_csv} and {report.html}")
