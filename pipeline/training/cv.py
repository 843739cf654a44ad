"""``train --cv K``: out-of-fold accuracy over K folds of train + val, for small data where one split is noise.

Folds are stratified by class and grouped by content: byte-identical images and near-duplicate
twins (found in pixels, as the splits find them) always share a fold, so no copy in the training
folds vouches for its twin. Each fold trains a fresh head with the run's settings on the features
already in memory; the held-out fold only scores it (nothing is chosen on it).
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError
from pipeline.health import duplicates
from pipeline.health.pixels import Thumbnails


def twin_groups(keys: list[str], thumbnails: Thumbnails) -> np.ndarray:
    """(n,) group number per row: one content or one near-duplicate group, one number."""
    pairs = duplicates.near_duplicates(None, keys, thumbnails)
    return duplicates.fold_groups(keys, duplicates.groups(pairs, len(keys)))


def fold_rows(labels: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, held-out rows) per fold, stratified by ``labels`` and grouped by ``groups``."""
    from sklearn.model_selection import StratifiedGroupKFold

    names, counts = np.unique(labels, return_counts=True)
    if folds < 2:
        raise PipelineError(f"--cv {folds}: cross-validation needs at least 2 folds")
    if counts.min() < folds:
        smallest = names[int(np.argmin(counts))]
        raise PipelineError(
            f"--cv {folds}: class {smallest!r} has {counts.min()} train and val images, fewer than the folds; "
            f"pass --cv {max(2, int(counts.min()))} or add images to it"
        )
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(labels)), labels, groups))


def cross_validate(
    make_head, X: np.ndarray, labels: np.ndarray, class_names: list[str], groups: np.ndarray, folds: int, seed: int
) -> dict:
    """``{"folds", "mean", "std", "accuracies"}``: each fold's accuracy of a head from ``make_head()`` trained on the others."""
    accuracies = []
    for train_rows, held_rows in fold_rows(labels, groups, folds, seed):
        head = make_head()
        head.fit(X[train_rows], labels[train_rows])
        probabilities = head.class_probabilities(X[held_rows], class_names)
        predicted = np.asarray(class_names, dtype=object)[np.argmax(probabilities, axis=1)].astype(str)
        accuracies.append(float(np.mean(predicted == labels[held_rows])))
    return {
        "folds": folds,
        "mean": float(np.mean(accuracies)),
        "std": float(np.std(accuracies)),
        "accuracies": [round(a, 6) for a in accuracies],
    }
