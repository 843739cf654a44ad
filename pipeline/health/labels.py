"""Likely label errors by confident learning (Northcutt, Jiang and Chuang, 2021), done by the book.

Every image gets out-of-fold probabilities from ``cross_val_predict`` of a head on the
cached features (no image is scored by a model that saw its label). Class j's threshold
t_j is the mean p_j over the images labelled j. An image counts in the confident joint at
(given label, j) for the class j, among those whose p_j >= t_j, with the largest p_j; it
is a label issue when that j is not its given label (an off-diagonal entry). Images are
ranked by self-confidence p[given] or by the normalised margin p[given] - max p[other].
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError

RANKINGS = ("self_confidence", "margin")


def out_of_fold_probabilities(
    X: np.ndarray, y: np.ndarray, estimator, folds: int, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """(n, n_classes) probabilities, columns in the order of ``np.unique(y)``.

    Folds are stratified and grouped (``groups``: copies and near-duplicates share a number), so
    an image is never scored by a model that trained on its copy."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    groups = np.arange(len(y)) if groups is None else groups
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    return cross_val_predict(estimator, X, y, groups=groups, cv=splitter, method="predict_proba")


def thresholds(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """t_j: the mean p_j over the images labelled j (inf for a class without images)."""
    return np.array(
        [probabilities[labels == j, j].mean() if np.any(labels == j) else np.inf for j in range(probabilities.shape[1])]
    )


def confident_labels(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The class each image is confidently counted as (-1 where it passes no threshold)."""
    above = probabilities >= thresholds(probabilities, labels)
    masked = np.where(above, probabilities, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True where the image falls off the confident joint's diagonal."""
    counted = confident_labels(probabilities, labels)
    return (counted >= 0) & (counted != labels)


def ranking_scores(probabilities: np.ndarray, labels: np.ndarray, ranking: str) -> np.ndarray:
    """Lower is more suspicious."""
    if ranking not in RANKINGS:
        raise PipelineError(f"--rank {ranking}: unknown ranking; use one of {', '.join(RANKINGS)}")
    own = probabilities[np.arange(len(labels)), labels]
    if ranking == "self_confidence":
        return own
    others = probabilities.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return own - others.max(axis=1)
