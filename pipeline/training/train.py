"""Stage two: train heads on a feature cache, one run per combination of settings.

Features are read once per call, into memory when they fit and streamed from the
HDF5 file when they do not, and every run shares them. Heads learn class names as
labels, so a run's ``classes_`` are the cache's class names.
"""

from __future__ import annotations

import dataclasses
import datetime
import inspect
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from classifiers import get_head
from features_cache.reader import FeatureCache
from pipeline.errors import PipelineError
from pipeline.health.pixels import Thumbnails
from pipeline.memory import available_memory
from pipeline.progress import bar
from pipeline.training import runs
from pipeline.training.cv import cross_validate, twin_groups
from pipeline.training.metrics import evaluate
from pipeline.training.settings import expand
from pipeline.training.splits import DEFAULT_FRACTIONS, plan_cache_splits
from pipeline.training.top import TOP_KEY, FrozenTop, has_top, saved_top
from pipeline.training.views import load_views

if TYPE_CHECKING:
    from classifiers import Head

LOAD_MODES = ("auto", "memory", "stream")
CLASS_WEIGHTS = ("none", "balanced")
EVAL_ROWS = 1024


@dataclasses.dataclass
class TrainOptions:
    cache: str
    head: str
    settings: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    name: str | None = None
    runs_dir: str = "runs"
    seed: int = 0
    fractions: Sequence[float] = DEFAULT_FRACTIONS
    class_weight: str = "none"
    load: str = "auto"
    views: tuple[str, ...] = ()  # cached augmented views training draws from (``extract --views``)
    cv: int = 0  # ``--cv K``: out-of-fold accuracy over K grouped, stratified folds of train + val (0: none)


@dataclasses.dataclass
class RunResult:
    name: str
    folder: Path
    entry: dict


def class_labels(cache: FeatureCache, rows: np.ndarray) -> np.ndarray:
    """The class names of cache rows ``rows``: what heads learn and predict."""
    return np.asarray(cache.class_names, dtype=object)[cache.labels[rows]].astype(str)


class CacheRows:
    """The rows ``indices`` of a cache as a :class:`classifiers.RowSource`, read on demand (through ``top`` when given)."""

    def __init__(self, cache: FeatureCache, indices: np.ndarray, top: FrozenTop | None = None) -> None:
        self.cache, self.indices, self.top = cache, indices, top
        self.labels = class_labels(cache, indices)
        self.input_shape = cache.feature_shape if top is None else top.output_shape

    def read(self, rows: np.ndarray) -> np.ndarray:
        features = self.cache.features(self.indices[rows])
        return features if self.top is None else self.top(features)


def load_features(cache: FeatureCache, indices: np.ndarray, what: str) -> np.ndarray:
    with bar(f"loading {what} features", len(indices)) as advance:
        return cache.features(indices, on_block=advance)


def run_name(options: TrainOptions, params: dict, varying: list[str], stamp: str) -> str:
    base = options.name or f"{options.head}-{stamp}"
    return "-".join([base, *(f"{key}={params[key]}" for key in varying)])


def run_train(options: TrainOptions, on_plan=None) -> Iterator[RunResult]:
    """Train one run per settings combination, yielding each as it is written.

    ``on_plan(plan)`` is called once the splits are decided, before any training.
    """
    head_cls = get_head(options.head)
    if options.load not in LOAD_MODES or options.class_weight not in CLASS_WEIGHTS:
        raise PipelineError(f"--load must be one of {', '.join(LOAD_MODES)} and --class-weight one of {', '.join(CLASS_WEIGHTS)}")
    settings = dict(options.settings)
    if options.class_weight == "balanced":
        if "class_weight" not in head_cls.defaults():
            raise PipelineError(f"head {options.head!r} has no class weights; drop --class-weight")
        settings.setdefault("class_weight", ["balanced"])
    grid = expand(head_cls, settings, options.seed)
    varying = [name for name, values in settings.items() if len(values) > 1]
    runs_dir = Path(options.runs_dir)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise PipelineError(f"--runs-dir {runs_dir}: not a folder; pass a folder for the runs, e.g. --runs-dir runs") from None
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")

    with FeatureCache(options.cache) as cache:
        grid, top = top_block(cache, options, head_cls, grid, runs_dir)
        plan = plan_cache_splits(cache, options.fractions, check_leakage=True)
        plan.notes.extend(selection_warnings(grid, plan.held_out))
        if on_plan is not None:
            on_plan(plan)
        used = ("train", *plan.held_out)
        indices = {split: plan.rows(split) for split in used}
        in_memory = options.load == "memory" or (
            options.load == "auto" and 3 * len(cache) * int(np.prod(cache.feature_shape)) * 4 < available_memory()
        )
        data = {split: load_features(cache, rows, split) for split, rows in indices.items()} if in_memory else None
        if data is not None and top is not None:
            data = {split: top(features) for split, features in data.items()}
        for features in (data or {}).values():
            features.flags.writeable = False  # shared by every run: the Keras heads standardise them once
        labels = {split: class_labels(cache, rows) for split, rows in indices.items()}
        train_content = runs.content_keys(cache, indices["train"])
        scored_on = runs.scored_key(runs.content_keys(cache, indices["test" if "test" in indices else "val"]))
        views = training_views(cache, options, head_cls, indices["train"], in_memory, top)
        folds = cv_inputs(cache, indices, data, top) if options.cv else None
        for params in grid:
            name, folder = runs.new_run_folder(runs_dir, run_name(options, params, varying, stamp), options.name is not None)
            started = time.perf_counter()
            head = head_cls(**params)
            if data is not None:
                head.fit(data["train"], labels["train"], X_val=data["val"], y_val=labels["val"], **views)
            else:
                head.fit_stream(CacheRows(cache, indices["train"], top), val=CacheRows(cache, indices["val"], top))
            fit_seconds = time.perf_counter() - started
            probas = {
                split: predict(head, cache, indices[split], None if data is None else data[split], top) for split in plan.held_out
            }
            metrics = {split: evaluate(cache.labels[indices[split]], probas[split], cache.class_names) for split in probas}
            config = runs.run_config(cache, head, name, in_memory, plan, fit_seconds, seed=options.seed, fractions=options.fractions)
            if options.views:
                config["views"] = list(options.views)
            if folds is not None:
                X, y, groups = folds
                config[runs.CV_KEY] = cross_validate(
                    lambda params=params: head_cls(**params), X, y, cache.class_names, groups, options.cv, options.seed
                )
            if has_top(cache.recipe):
                config[TOP_KEY] = {"layer": cache.recipe.layer, "block": "frozen" if top is not None else "fine-tuned"}
            yield RunResult(name, folder, runs.write_run(
                runs_dir, folder, head, config, metrics, cache, indices, probas, train_content, scored_on
            ))


def cv_inputs(
    cache: FeatureCache, indices: dict[str, np.ndarray], data: dict[str, np.ndarray] | None, top: FrozenTop | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Features, class names and fold groups of train + val for ``--cv``: the features already in memory
    (read once here when training streams), groups by content and pixel near-duplicates."""
    rows = np.concatenate([indices["train"], indices["val"]])
    if data is not None:
        X = np.concatenate([data["train"], data["val"]])
    else:
        X = load_features(cache, rows, "train and val (--cv)")
        X = X if top is None else top(X)
    records = cache.records()
    keys = [records[int(r)].content_hash for r in rows]
    groups = twin_groups(keys, Thumbnails(cache.data_root, [cache.paths[int(r)] for r in rows]))
    return X, class_labels(cache, rows), groups


def selection_warnings(grid: list[dict[str, Any]], held_out: tuple[str, ...]) -> list[str]:
    """A warning when val both chose something (the epoch, the schedule, the setting) and is the only split scored."""
    if "test" in held_out:
        return []
    chose = [f"the setting among {len(grid)} runs (--set)"] if len(grid) > 1 else []
    if any(params.get("early_stopping") for params in grid):
        chose.append("the epoch (early_stopping)")
    if any(params.get("reduce_lr") for params in grid):
        chose.append("the learning-rate schedule (reduce_lr)")
    if not chose:
        return []
    return [
        f"warning: val chose {' and '.join(chose)} and is also the only split scored, so its figures are optimistic; "
        "give the cache a test split (a test/ folder, test rows in the CSV, or --split with a test share) to measure unseen images"
    ]


def predict(head: Head, cache: FeatureCache, rows: np.ndarray, loaded: np.ndarray | None, top: FrozenTop | None = None) -> np.ndarray:
    """Probabilities for cache rows ``rows`` in the cache's class order: from ``loaded`` features, else read in
    blocks (through the frozen ``top`` when the head trained on the backbone's output of a cache of an earlier layer)."""
    blocks = [loaded] if loaded is not None else cache.iter_features(rows, batch_size=EVAL_ROWS)
    if loaded is None and top is not None:
        blocks = top.blocks(blocks)
    return np.concatenate([head.class_probabilities(block, cache.class_names) for block in blocks])


def training_views(cache: FeatureCache, options: TrainOptions, head_cls, rows: np.ndarray, in_memory: bool,
                   top: FrozenTop | None) -> dict[str, np.ndarray]:
    """``fit``'s ``views`` argument for the training rows: the cached views named by ``--views``, if any."""
    if not options.views:
        return {}
    if "views" not in inspect.signature(head_cls.fit).parameters:
        raise PipelineError(f"head {options.head!r} trains without views; drop --views or use --head dense, gap or finetune")
    if not in_memory:
        raise PipelineError("--views trains from memory; use --load memory on a machine with room for the views")
    return {"views": load_views(cache, rows, options.views, top)}


def top_block(cache: FeatureCache, options: TrainOptions, head_cls, grid: list[dict], runs_dir: Path) -> tuple[list[dict], FrozenTop | None]:
    """The settings and frozen block for a cache of maps before the backbone's output.

    ``finetune`` gets the recipe's block as its ``top`` (unless ``--set top=`` names one);
    every other head trains on the block's frozen output, as on a cache of the output.
    """
    fine_tune = head_cls.name == "finetune"
    if not has_top(cache.recipe):
        if fine_tune:
            raise PipelineError(
                f"{options.cache} holds {cache.recipe.backbone}'s output maps, which leave no block to fine-tune; "
                f"extract with --layer block4_pool into another --cache and train --head finetune on that"
            )
        return grid, None
    if not fine_tune:
        return grid, FrozenTop(cache.recipe)
    top = str(saved_top(cache.recipe, runs_dir))
    return [{**params, "top": params.get("top") or top} for params in grid], None
