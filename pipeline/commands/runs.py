"""``pipeline runs [--runs-dir runs] [--cache CACHE]``: trained runs as tables, one per set of scored images.

Runs are only comparable on the same images: a table holds the runs scored on one set of test
images (val images for runs without a test split), whatever cache they read them from, with the
image size, backbone and layer of that cache, the settings that differ from the head's
defaults, and a Wilson 95% interval on accuracy, so that 0.982 against 1.000 on 55 images reads
as the tie it is. ``--cache`` keeps the runs scored on that cache's own held-out images.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from rich.table import Table

from pipeline.commands.output import make_console

ORDER = "best validation accuracy first; ties by lower validation log loss, then by name"
SETTINGS_WIDTH = 80
Z95 = 1.959963984540054


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "runs", help="list trained runs, best first, grouped by the images they were scored on"
    )
    parser.add_argument("--runs-dir", default="runs", help="where train put its runs (default runs)")
    parser.add_argument(
        "--cache",
        default=None,
        help="only the runs scored on this cache's held-out images (its split, as train made it)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pipeline.training.runs import ranked, read_index

    entries = [complete(entry, Path(args.runs_dir)) for entry in read_index(args.runs_dir)]
    if not entries:
        make_console().print(
            f"no runs in {args.runs_dir}/ yet; train one with `python -m pipeline train CACHE.h5 --head dense`"
        )
        return 0
    if args.cache:
        keys = cache_scored_keys(args.cache, {tuple(e["fractions"]) for e in entries if e.get("fractions")})
        entries = [e for e in entries if e.get("scored_on") in keys]
        if not entries:
            make_console().print(f"no run in {args.runs_dir}/ was scored on the held-out images of {args.cache}")
            return 0
    groups: dict[str | None, list[dict]] = {}
    for entry in entries:
        groups.setdefault(entry.get("scored_on"), []).append(entry)
    for key, members in sorted(groups.items(), key=lambda item: (item[0] is None, -len(item[1]), str(item[0]))):
        runs_text = f"{len(members)} run" + ("s" if len(members) > 1 else "")
        print_runs(ranked(members), title=f"{runs_text} {scored_text(key, members)}; {ORDER}")
    return 0


def scored_text(key: str | None, members: list[dict]) -> str:
    if key is None:
        return "trained before runs recorded their scored images (not comparable with the others)"
    split = "test" if members[0].get("test") else "val"
    return f"scored on the same {key.split(':')[0]} {split} images (set {key.split(':')[1]})"


def complete(entry: dict, runs_dir: Path) -> dict:
    """An index entry with the cache's size, backbone and layer, the fractions and the held-out counts,
    read from the run's config.json where an older entry lacks them."""
    from pipeline.errors import PipelineError
    from pipeline.training.runs import RECIPE_COLUMNS, load_run_config

    if "fractions" in entry:
        return entry
    try:
        config = load_run_config(runs_dir / entry["name"])
    except PipelineError:  # an unreadable config: the entry as it is, blanks in the new columns
        return entry
    recipe = config.get("cache", {}).get("recipe", {})
    counts = config.get("split", {}).get("counts", {})
    filled = {
        **entry,
        **{key: recipe.get(key) for key in RECIPE_COLUMNS},
        "fractions": config.get("split", {}).get("fractions"),
    }
    for split in ("val", "test"):
        if isinstance(entry.get(split), dict) and split in counts:
            filled[split] = {**entry[split], "n": counts[split]}
    return filled


def cache_scored_keys(cache_path: str, fractions: set[tuple[float, ...]]) -> set[str]:
    """The scored-image keys of ``cache_path``'s held-out images under each of ``fractions``."""
    from features_cache.errors import CacheError
    from features_cache.reader import FeatureCache
    from pipeline.errors import PipelineError
    from pipeline.training.runs import content_keys, scored_key
    from pipeline.training.splits import plan_cache_splits

    try:
        with FeatureCache(cache_path) as cache:
            keys = set()
            for split_fractions in fractions:
                plan = plan_cache_splits(cache, split_fractions, remember=False, for_training=False)
                rows = plan.rows("test") if len(plan.rows("test")) else plan.rows("val")
                keys.add(scored_key(content_keys(cache, rows)))
            return keys
    except CacheError as error:
        raise PipelineError(f"--cache {cache_path}: {error}") from None


FILLED_BY_TRAIN = {"top"}  # finetune's top block: a file train builds from the cache's recipe, not a setting


def settings_text(entry: dict) -> str:
    """The settings that differ from the head's defaults (a wrapped estimator by its own repr, which shows
    only its non-default parameters), cut to ``SETTINGS_WIDTH`` characters."""
    from classifiers import HEAD_NAMES, get_head

    defaults = get_head(entry["head"]).defaults() if entry["head"] in HEAD_NAMES else {}
    params = entry["params"]
    nested = "estimator" in params
    chosen = {
        k: v
        for k, v in params.items()
        if defaults.get(k) != v and k not in FILLED_BY_TRAIN and not (nested and "__" in k)
    }
    text = " ".join(f"{k}={v}" for k, v in chosen.items()) or "defaults"
    return text if len(text) <= SETTINGS_WIDTH else text[: SETTINGS_WIDTH - 1] + "…"


def wilson(accuracy: float, n: int) -> tuple[float, float]:
    """The Wilson score 95% interval of an accuracy measured on ``n`` images."""
    if n <= 0:
        return 0.0, 1.0
    k = round(accuracy * n)
    p = k / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 / (1 + Z95**2 / n) * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_text(metrics: dict | None) -> str:
    if not metrics:
        return "-"
    if "n" not in metrics:
        return f"{metrics['accuracy']:.3f}"
    low, high = wilson(metrics["accuracy"], int(metrics["n"]))
    return f"{metrics['accuracy']:.3f} [{low:.2f}-{high:.2f}] n={metrics['n']}"


def cv_text(entry: dict) -> str:
    from pipeline.training.runs import CV_KEY

    cv = entry.get(CV_KEY)
    return f"{cv['mean']:.3f} ± {cv['std']:.3f} ({cv['folds']}-fold)" if cv else "-"


def cache_columns(entry: dict) -> tuple[str, str, str]:
    size = entry.get("image_size")
    layer = entry.get("layer") or "-"
    return (
        str(size) if size else "-",
        entry.get("backbone") or "-",
        layer + (f" view {entry['view']}" if entry.get("view") else ""),
    )


def print_runs(entries: list[dict], title: str | None = None, header: bool = True) -> None:
    table = Table(title=title, show_edge=False, show_header=header)
    columns = (
        "run",
        "head",
        "settings",
        "size",
        "backbone",
        "layer",
        "val acc [95% CI]",
        "test acc [95% CI]",
        "test F1",
        "test loss",
        "cv acc",
        "fit s",
        "cache",
    )
    left = {"run", "head", "settings", "backbone", "layer", "cache"}
    for column in columns:
        table.add_column(column, justify="left" if column in left else "right")
    for e in entries:
        test = e.get("test") or {}
        table.add_row(
            e["name"],
            e["head"],
            settings_text(e),
            *cache_columns(e),
            accuracy_text(e.get("val")),
            accuracy_text(test or None),
            *(f"{test[key]:.3f}" if key in test else "-" for key in ("macro_f1", "log_loss")),
            cv_text(e),
            f"{e['fit_seconds']:.1f}",
            cache_text(e),
        )
    make_console().print(table)


def cache_text(entry: dict) -> str:
    """The cache's file name: the settings fingerprint is the same for every cache made one way."""
    path = entry.get("cache_path")
    return Path(str(path)).name if path else entry.get("cache_identity", "-")
