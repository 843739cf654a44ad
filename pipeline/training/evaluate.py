"""A trained run scored on another cache: new test photos, without training or extracting again.

The cache must have been made the same way as the run's (same recipe fingerprint); its
images may differ. Classes are matched by name, so the cache may hold a subset of the
run's classes, never one the head does not know.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from features_cache.reader import FeatureCache
from pipeline.errors import PipelineError
from pipeline.training.metrics import evaluate
from pipeline.training.runs import (
    CONTENT_KEY_DIGITS,
    TRAIN_CONTENT,
    check_same_cache,
    load_run_config,
    resolve_run,
    write_predictions,
)
from pipeline.training.top import TOP_KEY, FrozenTop


@dataclasses.dataclass
class Evaluation:
    run_dir: Path
    cache: Path
    split: str
    metrics: dict
    out: Path
    seen_metrics: dict | None = None  # the run's own training images, scored apart (``include_seen``)


def run_evaluate(
    run: str, cache_path: str, runs_dir: str = "runs", split: str = "all", out: str | None = None, include_seen: bool = False
) -> Evaluation:
    """Score every image of ``cache_path`` (or its stored ``split``) with the run's head.

    Images whose content the run trained on, under any name and in any cache, are refused
    (they would be scored as new); ``include_seen`` scores them apart instead.
    """
    from classifiers import load_head

    run_dir = resolve_run(run, runs_dir)
    config = load_run_config(run_dir)
    class_names = [str(name) for name in config["class_names"]]
    with FeatureCache(cache_path) as cache:
        check_same_cache(config, cache)
        unknown = sorted(set(cache.class_names) - set(class_names))
        if unknown:
            raise PipelineError(
                f"{cache.path}: classes {', '.join(unknown)} are not among the run's ({', '.join(class_names)}); "
                "evaluate on images of the run's classes, or train a head on this cache"
            )
        training_cache = Path(config["cache"]["path"]).resolve() == Path(cache.path).resolve()
        if training_cache and split in ("all", "train"):
            raise PipelineError(
                f"{cache.path} is the cache run {config['name']!r} was trained on: --split {split} would score its "
                "training images; see its held-out images with `pipeline report`, or evaluate a cache of new images"
            )
        rows = np.arange(len(cache)) if split == "all" else np.flatnonzero(cache.splits == split)
        if len(rows) == 0:
            stored = sorted({str(s) for s in cache.splits if s}) or ["none"]
            raise PipelineError(
                f"{cache.path}: no images in the stored {split} split (stored splits: {', '.join(stored)}); "
                "pass --split all to score every image of this cache"
            )
        rows, seen = _split_off_training_images(config, cache, rows, include_seen)
        head = load_head(run_dir)
        top = FrozenTop(cache.recipe) if config.get(TOP_KEY, {}).get("block") == "frozen" else None
        labels, proba = _score(head, cache, rows, class_names, top)
        metrics = evaluate(labels, proba, class_names)
        seen_metrics = evaluate(*_score(head, cache, seen, class_names, top), class_names) if len(seen) else None
        destination = Path(out) if out else run_dir / f"evaluate-{Path(cache_path).stem}.csv"
        write_predictions(
            destination, [cache.paths[r] for r in rows], proba, class_names, splits=cache.splits[rows].tolist(), y_true=labels
        )
    return Evaluation(run_dir, Path(cache_path), split, metrics, destination, seen_metrics)


def _score(head, cache: FeatureCache, rows: np.ndarray, class_names: list[str], top: FrozenTop | None) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([class_names.index(cache.class_names[label]) for label in cache.labels[rows]], dtype=np.int64)
    blocks = cache.iter_features(rows, batch_size=1024)
    blocks = [head.class_probabilities(block, class_names) for block in (blocks if top is None else top.blocks(blocks))]
    return labels, np.concatenate(blocks)


def _split_off_training_images(
    config: dict, cache: FeatureCache, rows: np.ndarray, include_seen: bool
) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` as (unseen, seen by the run's training); refuses seen ones unless ``include_seen``.

    Runs written before the run folder recorded its training content have no guard but the path one."""
    trained = set(config.get(TRAIN_CONTENT) or ())
    records = cache.records()
    seen_mask = np.array([records[int(r)].content_hash[:CONTENT_KEY_DIGITS] in trained for r in rows], dtype=bool)
    seen, unseen = rows[seen_mask], rows[~seen_mask]
    if len(seen) and (not include_seen or not len(unseen)):
        what = "all" if not len(unseen) else f"{len(seen)} of the {len(rows)}"
        advice = "evaluate a cache of new images" if not len(unseen) else "pass --include-seen to score them apart, or remove them"
        raise PipelineError(
            f"{cache.path}: {what} images have the same content as training images of run {config['name']!r} "
            f"(e.g. {cache.paths[int(seen[0])]}), under whatever name; scoring them as new would overstate accuracy: {advice}"
        )
    return unseen, seen
