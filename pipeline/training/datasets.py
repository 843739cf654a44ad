"""The Python side of stage two, for notebooks: a cache's splits as numpy arrays, and any classifier as a run.

>>> from features_cache import FeatureCache
>>> from pipeline.training.datasets import load_split, save_run
>>> with FeatureCache("cache/photos.h5") as cache:
...     X_train, y_train = load_split(cache, "train", pooling="avg")
...     clf = LogisticRegression(max_iter=1000).fit(X_train, y_train)
...     run = save_run(clf, cache, pooling="avg", name="my-logreg")

The splits are the ones ``pipeline train`` uses (stored, then the remembered stratified
ones), the labels are class names, and ``save_run`` writes the same run folder as
``train``, so ``report``, ``runs``, ``evaluate`` and ``predict`` work on it.
"""

from __future__ import annotations

import datetime
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from classifiers import EstimatorHead, Head
from classifiers.base import POOLINGS, class_columns, pool_maps
from features_cache.reader import FeatureCache
from pipeline.errors import PipelineError
from pipeline.training import runs
from pipeline.training.metrics import evaluate
from pipeline.training.runs import run_config, write_run
from pipeline.training.splits import DEFAULT_FRACTIONS, SPLITS, plan_cache_splits
from pipeline.training.train import class_labels, predict


def load_split(
    cache: FeatureCache,
    split: str = "train",
    *,
    pooling: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    return_paths: bool = False,
) -> tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, list[str]]:
    """``(X, y)`` of one split (``train``, ``val``, ``test`` or ``all``): float32 features and class names.

    ``pooling`` None keeps the (n, h, w, c) maps; ``avg``/``max`` give (n, c), ``flatten``
    (n, h*w*c). ``return_paths=True`` adds the images' paths relative to the data root.
    """
    if split == "all":
        rows = np.arange(len(cache))
    elif split in SPLITS:
        rows = plan_cache_splits(cache, fractions, remember=False).rows(split)
    else:
        raise PipelineError(f"split {split!r} is unknown; use train, val, test or all")
    if pooling is not None and pooling not in POOLINGS:
        raise PipelineError(f"pooling={pooling!r} is unknown; use one of {', '.join(POOLINGS)} or None")
    X = pool_maps(cache.features(rows), pooling).astype(np.float32, copy=False)
    y = class_labels(cache, rows)
    if return_paths:
        return X, y, [cache.paths[r] for r in rows]
    return X, y


def save_run(
    estimator,
    cache: FeatureCache,
    *,
    pooling: str | None = None,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    fit_seconds: float = 0.0,
    overwrite: bool = False,
) -> Path:
    """Score a fitted classifier on the cache's held-out splits and write a run folder; returns its path.

    ``estimator`` is a fitted head of this project or any fitted scikit-learn classifier with
    ``predict_proba``, trained on ``load_split(cache, "train", pooling=pooling)``. A ``name``
    already taken is refused unless ``overwrite=True``, which replaces that run once the new
    one is written (so a notebook cell can run again).
    """
    if isinstance(estimator, Head):
        head = estimator
    else:
        head = EstimatorHead(estimator=estimator, pooling=pooling or "none").adopt(cache.feature_shape)
    if not hasattr(head, "classes_"):
        raise PipelineError(f"{type(estimator).__name__} is not fitted; call its fit first")
    try:
        class_columns(head.classes_, cache.class_names)
    except ValueError as error:
        raise PipelineError(f"{type(estimator).__name__} of {cache.path}: {error}, e.g. y from load_split") from None
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    replaced = None
    if name is not None and (runs_dir / name).exists():
        if not overwrite:
            raise PipelineError(
                f"run {name!r} already exists in {runs_dir}/; pass another name= or save_run(..., overwrite=True) to replace it"
            )
        replaced = runs.set_aside(runs_dir, name)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_name, folder = runs.new_run_folder(runs_dir, name or f"{head.name}-{stamp}", name is not None)
    plan = plan_cache_splits(cache, fractions, check_leakage=True)
    indices = {split: plan.rows(split) for split in ("train", *plan.held_out)}
    started = time.perf_counter()
    probas = {split: predict(head, cache, indices[split], None) for split in plan.held_out}
    metrics = {split: evaluate(cache.labels[indices[split]], probas[split], cache.class_names) for split in probas}
    config = run_config(
        cache, head, run_name, True, plan, fit_seconds or time.perf_counter() - started, seed=0, fractions=fractions
    )
    try:
        write_run(runs_dir, folder, head, config, metrics, cache, indices, probas)
    except BaseException:
        if replaced is not None:
            replaced.rename(folder)
        raise
    if replaced is not None:
        runs.forget_replaced(runs_dir, name, replaced)
    return folder
