"""``pipeline train CACHE.h5 --head dense|gap|logreg [--set name=v1,v2 ...]``: stage two."""

from __future__ import annotations

import argparse

DEFAULT_HEAD = "dense"


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a head on a feature cache; one run per value of each --set setting",
        description="Train a cheap head on cached CNN codes. Each run leaves runs/<name>/ with the model, "
        "config, metrics, predictions and history, and a line in runs/index.jsonl.",
    )
    parser.add_argument("cache", help="an HDF5 feature cache written by `pipeline extract`")
    parser.add_argument("--head", default=None, help="dense (default), gap, logreg or finetune (on a --layer block4_pool cache)")
    parser.add_argument(
        "--set", dest="settings", action="append", default=[], metavar="NAME=VALUE[,VALUE...]",
        help="a head setting, e.g. --set dropout=0.3,0.5 or --set C=0.1,1,10; several values make one run each",
    )
    parser.add_argument("--name", default=None, help="run name (default: <head>-<date>-<time>)")
    parser.add_argument("--runs-dir", default="runs", help="where run folders and index.jsonl live (default runs)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, dropout and shuffling (default 0)")
    parser.add_argument(
        "--split", default="0.7,0.15,0.15", metavar="TRAIN,VAL,TEST",
        help="shares for images the cache has no split for (default 0.7,0.15,0.15)",
    )
    parser.add_argument("--class-weight", default="none", choices=("none", "balanced"), help="balanced: weigh rare classes up")
    parser.add_argument(
        "--load", default="auto", choices=("auto", "memory", "stream"),
        help="auto (default): features into memory when they fit, else streamed from the cache",
    )
    parser.add_argument(
        "--views", default=None, metavar="VIEW[,VIEW...]",
        help="train on the augmented views `extract --views` cached (e.g. flip,crop1): each epoch draws one view "
        "of each training image, the original among them (--set views=all: every view, finetune)",
    )
    parser.add_argument(
        "--cv", type=int, default=0, metavar="K",
        help="also report out-of-fold accuracy, mean ± std over K stratified folds of train + val grouped by content "
        "and near-duplicates (for small data, where one split is noise)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.commands.runs import print_runs
    from pipeline.extraction.views import parse_views
    from pipeline.training.runs import ranked
    from pipeline.training.settings import parse_settings
    from pipeline.training.splits import parse_fractions
    from pipeline.training.train import TrainOptions, run_train

    if args.head is None:
        print(f"head: {DEFAULT_HEAD} (the default; --head gap, logreg or finetune picks another)", flush=True)
    options = TrainOptions(
        cache=args.cache,
        head=(args.head or DEFAULT_HEAD).lower(),
        settings=parse_settings(args.settings),
        name=args.name,
        runs_dir=args.runs_dir,
        seed=args.seed,
        fractions=parse_fractions(args.split),
        class_weight=args.class_weight,
        load=args.load,
        views=parse_views(args.views),
        cv=args.cv,
    )
    entries = []
    for result in run_train(options, on_plan=print_plan):
        entries.append(result.entry)
        print_runs([result.entry], header=not entries[:-1])
        print(f"run {result.name}: {result.folder}", flush=True)
    if len(entries) > 1:
        print_runs(ranked(entries), title="best first")
    best = ranked(entries)[0]["name"]
    print(f"next: make report RUN={best}   (or: python -m pipeline report {best} --runs-dir {args.runs_dir})")
    return 0


def print_plan(plan) -> None:
    counts = ", ".join(f"{split} {len(plan.rows(split))}" for split in ("train", "val", "test") if len(plan.rows(split)))
    notes = [note for note in plan.notes if not note.startswith("warning:")]
    print(f"splits: {counts}; " + "; ".join(notes), flush=True)
    for note in plan.notes:
        if note.startswith("warning:"):
            print(note, flush=True)
