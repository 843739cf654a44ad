"""``pipeline audit CACHE.h5``: rank the labelled images by how unlikely their given label is."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import PipelineError, check_output_file


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="find likely label errors in a feature cache (out-of-fold predictions, confident learning)",
        description="Cross-validate a cheap head on the cached features so every labelled image gets an out-of-fold "
        "prediction, then rank the images whose given label is least likely. Writes a CSV and a self-contained page.",
    )
    parser.add_argument("cache", help="an HDF5 feature cache written by `pipeline extract`")
    parser.add_argument("--head", default="logreg", help="head to cross-validate: logreg (default, seconds per fold), gap or dense")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a head setting, e.g. C=0.5 (repeatable)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument(
        "--rank", default="self_confidence", choices=("self_confidence", "margin"),
        help="p[given] (default) or the normalised margin p[given] - max p[other]",
    )
    parser.add_argument("--out", default=None, help="CSV to write (default: CACHE with .audit.csv; the page beside it as .audit.html)")
    parser.add_argument("--show", type=int, default=100, help="images on the page (default 100)")
    parser.add_argument("--top", type=int, default=20, help="rows printed (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.set_defaults(run=run)


def head_params(head: str, items: list[str]) -> dict[str, object]:
    """One value per ``--set NAME=VALUE``, typed and checked the way ``train`` does it."""
    from classifiers import get_head
    from pipeline.train import coerce

    head_cls = get_head(head)
    params: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip() or "," in value:
            raise PipelineError(f"--set {item!r} is not name=value (one value); e.g. --set C=0.5")
        params[name.strip()] = coerce(head_cls, name.strip(), value.strip())
    head_cls(**{**head_cls.defaults(), **params}).check_params()
    return params


def run(args: argparse.Namespace) -> int:
    from pipeline.audit import run_audit, write_csv, write_html

    params = head_params(args.head.lower(), args.set)
    out = check_output_file(args.out, "--out") if args.out else Path(args.cache).with_suffix(".audit.csv")
    result = run_audit(args.cache, head=args.head.lower(), params=params, folds=args.folds, ranking=args.rank, seed=args.seed)
    write_csv(result, out)
    write_html(result, out.with_suffix(".html"), args.show)
    print_audit(result, args.top)
    return 0


def print_audit(result, top: int) -> None:
    from rich.console import Console
    from rich.table import Table

    from pipeline.audit import summary_lines

    console = Console(highlight=False, soft_wrap=True)
    table = Table(show_edge=False, title=f"the {top} least likely labels")
    for column in ("rank", "path", "given", "suggested", "p(given)", "margin", "flagged"):
        table.add_column(column)
    suggested, confidence, margin = result.suggested, result.self_confidence, result.margin
    for rank, i in enumerate(result.order[:top], start=1):
        table.add_row(
            str(rank), result.paths[i], result.class_names[result.labels[i]], result.class_names[suggested[i]],
            f"{confidence[i]:.3f}", f"{margin[i]:+.3f}", "yes" if result.flagged[i] else "",
        )
    console.print(table)
    for line in summary_lines(result):
        console.print(line)
    console.print(f"wrote {result.csv} and {result.html}")
