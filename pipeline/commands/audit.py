"""``pipeline audit CACHE.h5``: the data set's health: near-duplicates and leakage, outliers, label errors, balance."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import PipelineError


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="check a data set's health from its feature cache: near-duplicates, leakage, outliers, label errors, balance",
        description="Find near-duplicate images (and the groups that span splits), outliers, likely label errors "
        "(confident learning on out-of-fold predictions) and class imbalance, from the cached codes. Writes one CSV per "
        "section and a page where a person reviews the findings and downloads a corrected CSV manifest.",
    )
    parser.add_argument("cache", help="an HDF5 feature cache written by `pipeline extract`")
    parser.add_argument("--head", default="logreg", help="model cross-validated for label errors: logreg (default: a logistic regression, C=100, averaged with a 10-neighbour vote on unit-length pooled codes), gap or dense")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a head setting, e.g. C=0.5 (repeatable)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument(
        "--rank", default="self_confidence", choices=("self_confidence", "margin"),
        help="order of label errors: p[given] (default) or the normalised margin p[given] - max p[other]",
    )
    parser.add_argument("--threshold", type=float, default=None, help="cosine similarity for near-duplicate candidates, confirmed in pixels (default 0.80)")
    parser.add_argument("--out", default=None, help="folder for the CSVs and the page (default: CACHE with .audit)")
    parser.add_argument("--show", type=int, default=100, help="images per section on the page (default 100)")
    parser.add_argument("--top", type=int, default=10, help="rows printed per section (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fold assignment (default 0)")
    parser.set_defaults(run=run)


def head_params(head: str, items: list[str]) -> dict[str, object]:
    """One value per ``--set NAME=VALUE``, typed and checked the way ``train`` does it."""
    from classifiers import get_head
    from pipeline.training.settings import coerce

    head_cls = get_head(head)
    params: dict[str, object] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip() or "," in value:
            raise PipelineError(f"--set {item!r} is not name=value (one value); e.g. --set C=0.5")
        params[name.strip()] = coerce(head_cls, name.strip(), value.strip())
    head_cls(**{**head_cls.defaults(), **params}).check_params()
    return params


def output_folder(cache: str, out: str | None) -> Path:
    folder = Path(out) if out else Path(cache).with_suffix(".audit")
    if folder.exists() and not folder.is_dir():
        raise PipelineError(f"--out {folder}: is a file; pass a folder for the audit's CSVs and page")
    if not folder.resolve().parent.is_dir():
        raise PipelineError(f"--out {folder}: folder {folder.resolve().parent} does not exist; create it first")
    return folder


def run(args: argparse.Namespace) -> int:
    from pipeline.analysis import audit_files as files
    from pipeline.analysis import audit_page as page
    from pipeline.analysis.audit import run_audit
    from pipeline.analysis.html_page import write_page
    from pipeline.health import duplicates

    params = head_params(args.head.lower(), args.set)
    folder = output_folder(args.cache, args.out)
    threshold = duplicates.DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    result = run_audit(
        args.cache, head=args.head.lower(), params=params, folds=args.folds, ranking=args.rank, seed=args.seed,
        threshold=threshold,
    )
    files.write_all(result, folder)
    html = write_page(folder / "audit.html", page.render(result, args.show))
    print_audit(result, args.top)
    print(f"wrote {folder}/ ({', '.join([files.DUPLICATES, files.LEAKAGE, files.OUTLIERS, files.LABEL_ISSUES, files.CLASSES])}) and {html}")
    return 0


def print_audit(result, top: int) -> None:
    from rich.table import Table

    from pipeline.analysis.audit import summary_lines
    from pipeline.commands.output import make_console

    console = make_console()
    names = result.class_names
    if result.pairs:
        table = Table(show_edge=False, title="most similar near-duplicates")
        for column in ("path a", "path b", "similarity", "splits"):
            table.add_column(column)
        for pair in result.pairs[:top]:
            table.add_row(result.paths[pair.a], result.paths[pair.b], f"{pair.similarity:.3f}",
                          f"{result.splits[pair.a] or '-'} / {result.splits[pair.b] or '-'}")
        console.print(table)
    if len(result.outlier_rows):
        table = Table(show_edge=False, title="outliers, most isolated first")
        for column in ("path", "label", "kNN distance", "z"):
            table.add_column(column)
        for i in result.outlier_rows[:top]:
            table.add_row(result.paths[i], names[result.labels[i]], f"{result.outlier_scores[i]:.3f}", f"{result.outlier_z[i]:.1f}")
        console.print(table)
    table = Table(show_edge=False, title="the least likely labels")
    for column in ("rank", "path", "given", "suggested", "p(given)", "margin", "flagged"):
        table.add_column(column)
    suggested, confidence, margin = result.suggested, result.self_confidence, result.margin
    for rank, i in enumerate(result.order[:top], start=1):
        table.add_row(
            str(rank), result.paths[i], names[result.labels[i]], names[suggested[i]],
            f"{confidence[i]:.3f}", f"{margin[i]:+.3f}", "yes" if result.flagged[i] else "",
        )
    console.print(table)
    for line in summary_lines(result):
        console.print(line)
