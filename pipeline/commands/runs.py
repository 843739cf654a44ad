"""``pipeline runs [--runs-dir runs]``: every run as a table, best validation accuracy first."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from pipeline.commands.output import make_console


def register(subparsers) -> None:
    parser = subparsers.add_parser("runs", help="list trained runs, best first")
    parser.add_argument("--runs-dir", default="runs", help="where train put its runs (default runs)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.training.runs import ranked, read_index

    entries = read_index(args.runs_dir)
    if not entries:
        make_console().print(f"no runs in {args.runs_dir}/ yet; train one with `python -m pipeline train CACHE.h5 --head dense`")
        return 0
    print_runs(ranked(entries), title=f"{len(entries)} runs in {args.runs_dir}/, best validation accuracy first")
    return 0


FILLED_BY_TRAIN = {"top"}  # finetune's top block: a file train builds from the cache's recipe, not a setting


def settings_text(entry: dict) -> str:
    """The settings that differ from the head's defaults: what tells runs apart."""
    from classifiers import HEAD_NAMES, get_head

    defaults = get_head(entry["head"]).defaults() if entry["head"] in HEAD_NAMES else {}
    chosen = {k: v for k, v in entry["params"].items() if defaults.get(k) != v and k not in FILLED_BY_TRAIN}
    return " ".join(f"{k}={v}" for k, v in chosen.items()) or "defaults"


def print_runs(entries: list[dict], title: str | None = None, header: bool = True) -> None:
    table = Table(title=title, show_edge=False, show_header=header)
    for column in ("run", "head", "settings", "val acc", "val F1", "test acc", "test F1", "test loss", "fit s", "cache"):
        table.add_column(column, justify="left" if column in ("run", "head", "settings", "cache") else "right")
    for e in entries:
        test = e.get("test") or {}
        table.add_row(
            e["name"], e["head"], settings_text(e),
            f"{e['val']['accuracy']:.3f}", f"{e['val']['macro_f1']:.3f}",
            *(f"{test[key]:.3f}" if key in test else "-" for key in ("accuracy", "macro_f1", "log_loss")),
            f"{e['fit_seconds']:.1f}", cache_text(e),
        )
    make_console().print(table)


def cache_text(entry: dict) -> str:
    """The cache's file name: the settings fingerprint is the same for every cache made one way."""
    path = entry.get("cache_path")
    return Path(str(path)).name if path else entry.get("cache_identity", "-")
