"""Likely label errors by confident learning (Northcutt, Jiang and Chuang, 2021).

Every image gets out-of-fold probabilities from ``cross_val_predict`` of a head on the
cached features (no image is scored by a model that saw its label). Class j's threshold
t_j is the mean p_j over the images labelled j. An image counts in the confident joint at
(given label, j) for the class j, among those whose p_j >= t_j, with the largest p_j. The
joint's off-diagonal says *how many* labels are wrong; the ranking says *which*: images are
ranked by self-confidence p[given] or by the normalised margin p[given] - max p[other], and
that many of the lowest are flagged. Flagging the off-diagonal entries themselves marks
images that pass another class's threshold narrowly while missing flips that pass none
(measured on real photos, bench/health.py: of 23 flags, 15 flips against 18).

The off-diagonal only holds images confidently *in* another class. A wrong file, or a flip
whose true class the model half knows, is confidently in none, and was missed (5 of 25 planted
problems in one planting). So the count also takes every image whose p[given] is below the mean
p that its class gets on the images of the other classes: the label is less likely than it is
for a typical image that is not of that class.

The default (``logreg``) is the mean of a logistic regression and a nearest-neighbour vote on
the pooled codes in log units (log(1 + x / m), m the training rows' mean code value) made unit
length. Post-ReLU codes are heavy-tailed: a few channels with large activations decide raw
cosines, and the log damps them (out-of-fold accuracy on real photos 0.82-0.83 raw, 0.83-0.88
in log units) without standardising each channel (which lifts channels where nothing differs).
Five neighbours gave better-calibrated probabilities than ten (out-of-fold log loss 0.74 against
0.76 on the given labels). See README, "Dataset health"."""

from __future__ import annotations

import numpy as np

from pipeline.errors import PipelineError

RANKINGS = ("self_confidence", "margin")
# Unit-length rows have channels of about 1/sqrt(512): a weak penalty suits them. Measured on real
# photos with VGG16 conv weights from HED (three plantings, bench/health.py): see README, "Dataset health".
UNIT_C = 100.0
NEIGHBOURS = 5
BUNDLES_PER_FOLD = 20


class LogCodes:
    """log(1 + x / m), m the mean code value of the rows it was fitted on: damps the few channels with
    large activations while staying linear for small ones, in units of the data's own scale. A plain
    class with no settings (scikit-learn's ``clone`` needs only ``get_params``), so that importing this
    module does not import scikit-learn."""

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LogCodes:
        mean = float(np.mean(X))
        self.scale_ = mean if mean > 0 else 1.0
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.log1p(np.asarray(X, dtype=np.float32) / np.float32(self.scale_))

    def fit_transform(self, X: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        return self.fit(X).transform(X)

    def get_params(self, deep: bool = True) -> dict:
        return {}

    def set_params(self, **params) -> LogCodes:
        return self


def inverse_cosine_distance(distances: np.ndarray) -> np.ndarray:
    """Neighbour weights 1 / (1 - cosine) from Euclidean distances d between unit rows (1 - cosine = d^2 / 2);
    where a row has neighbours at distance 0 only those count, as scikit-learn's ``weights="distance"`` does."""
    exact = distances == 0
    with np.errstate(divide="ignore"):
        weights = 2.0 / np.square(distances)
    return np.where(exact.any(axis=1, keepdims=True), exact.astype(weights.dtype), weights)


def unit_row_estimator(
    C: float = UNIT_C, max_iter: int = 5000, tol: float = 1e-4, class_weight: dict | str | None = None, rows: int | None = None
):
    """The mean of two views of the log codes made unit length (no per-channel standardisation): a multinomial
    logistic regression, which weighs every channel, and the class vote of the ``NEIGHBOURS`` nearest
    images by cosine, which holds where a class is made of look-alikes (a cat's tiles next to coffee's).
    The vote ranks neighbours by Euclidean distance between unit rows (the same order as cosine), which
    scikit-learn searches without building the distance matrix. With ``rows`` (the data set's size) fewer
    neighbours, so that a training fold of a tiny set holds them."""
    from sklearn.ensemble import VotingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    neighbours = NEIGHBOURS if rows is None else max(1, min(NEIGHBOURS, rows // 3))
    vote = VotingClassifier(
        [
            ("logreg", LogisticRegression(C=C, max_iter=max_iter, tol=tol, class_weight=class_weight)),
            ("neighbours", KNeighborsClassifier(neighbours, weights=inverse_cosine_distance)),
        ],
        voting="soft",
    )
    return make_pipeline(LogCodes(), Normalizer(), vote)


def out_of_fold_probabilities(
    X: np.ndarray, y: np.ndarray, estimator, folds: int, seed: int, groups: np.ndarray | None = None
) -> np.ndarray:
    """(n, n_classes) probabilities, columns in the order of ``np.unique(y)``.

    Folds are stratified and grouped (``groups``: copies and near-duplicates share a number), so
    an image is never scored by a model that trained on its copy."""
    from sklearn.model_selection import StratifiedGroupKFold, cross_val_predict

    groups = np.arange(len(y)) if groups is None else groups
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    bundled = bundled_groups(y, groups, folds, seed)
    return cross_val_predict(estimator, X, y, groups=bundled, cv=splitter, method="predict_proba")


def bundled_groups(y: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Groups for ``StratifiedGroupKFold``, which takes a Python step per group (4 CPU s of the 20,000-code
    bench): images alone in their group are bundled, within their class and in random order, into pieces
    of at most 1/``BUNDLES_PER_FOLD`` of a fold's share of the class. A bundle holds only images without
    copies, so no copy leaves its twin, and each class still spreads over the folds to within a bundle.
    Classes of at most folds * ``BUNDLES_PER_FOLD`` images keep their groups, and so their folds."""
    _, inverse, sizes = np.unique(groups, return_inverse=True, return_counts=True)
    bundled = inverse.copy()
    alone = sizes[inverse] == 1
    rng = np.random.default_rng(seed)
    next_group = len(sizes)
    for label in np.unique(y):
        members = np.flatnonzero(alone & (y == label))
        size = -(-len(members) // (folds * BUNDLES_PER_FOLD))
        if size > 1:
            bundled[rng.permutation(members)] = next_group + np.arange(len(members)) // size
            next_group += -(-len(members) // size)
    return bundled


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


def non_member_means(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """u_j: the mean p_j over the images *not* labelled j (-inf where every image is labelled j)."""
    return np.array(
        [probabilities[labels != j, j].mean() if np.any(labels != j) else -np.inf for j in range(probabilities.shape[1])]
    )


def label_issues(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True where the image falls off the confident joint's diagonal, or where its given label's p is below
    what that class gets on the images of other classes (confidently in no class, and not in its own)."""
    counted = confident_labels(probabilities, labels)
    own = probabilities[np.arange(len(labels)), labels]
    return ((counted >= 0) & (counted != labels)) | (own < non_member_means(probabilities, labels)[labels])


def lowest_flagged(probabilities: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """True for the images with the lowest ``scores``, as many as the confident joint's off-diagonal holds."""
    count = int(label_issues(probabilities, labels).sum())
    flagged = np.zeros(len(labels), dtype=bool)
    flagged[np.lexsort((np.arange(len(scores)), scores))[:count]] = True
    return flagged


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
