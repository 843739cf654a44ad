"""Images far from every class: often a wrong file, a blank frame or something nobody meant to collect.

The score of an image is the smallest, over the classes, of its mean cosine distance to
that class's k nearest images, the neighbours taken from the other folds only (an image
never vouches for itself or for the copies in its fold, and a photo with copies counts
once). Taking neighbours inside each class means a handful of wrong files, even alike,
cannot vouch for one another. Distances
are on the raw pooled codes made unit length: standardising every channel, as the
duplicate search does, also lifts the channels where a wrong file differs from nothing.
An image is an outlier when its score is far above what is typical *in its own class*: a
robust z-score (median and MAD, Iglewicz and Hoaglin's modified z) against the scores of its
class, over ``Z_THRESHOLD``. A naturally diverse class (photos of anything, 3x the neighbour
distances of a texture class) is so judged by its own spread and not flagged wholesale; each
class's MAD is floored at the median MAD over the classes, so a class of near-identical
images (a retina's tiles) does not turn its ordinary spread into outliers. Measured with
bench/health.py on real photos, VGG16 conv weights from HED: see README, "Dataset health".
"""

from __future__ import annotations

import numpy as np

K = 5
Z_THRESHOLD = 4.0
FOLDS = 5


def raw_unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to length one (all-zero rows stay zero), so dot products are cosines."""
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return np.divide(X, norms, out=np.zeros_like(X), where=norms > 0).astype(np.float32)


def class_knn_distance(
    unit: np.ndarray, labels: np.ndarray, k: int = K, folds: int = FOLDS, seed: int = 0, groups: np.ndarray | None = None
) -> np.ndarray:
    """(n,) per image: min over classes of the mean cosine distance to that class's k nearest out-of-fold images.

    Folds are grouped (``groups``: copies and near-duplicates share a number), so an image's own
    copy never stands among its neighbours and hides it; and each group counts once among an
    image's neighbours, so a photo and its copies do not fill the k places of a foreign file's
    nearest neighbours (a flat grey frame next to a flower tile and its crop)."""
    from sklearn.model_selection import GroupKFold

    n = len(unit)
    groups = np.arange(n) if groups is None else groups
    scores = np.full(n, np.inf)
    splitter = GroupKFold(n_splits=max(2, min(folds, len(np.unique(groups)))))
    order = np.random.default_rng(seed).permutation(n)  # GroupKFold does not shuffle on every supported scikit-learn
    for reference, held_out in splitter.split(unit[order], groups=groups[order]):
        reference, held_out = order[reference], order[held_out]
        for label in np.unique(labels[reference]):
            members = reference[labels[reference] == label]
            members = members[np.sort(np.unique(groups[members], return_index=True)[1])]  # one image per group
            similarity = unit[held_out] @ unit[members].T
            kk = min(k, len(members))
            nearest = -np.partition(-similarity, kk - 1, axis=1)[:, :kk]
            scores[held_out] = np.minimum(scores[held_out], (1.0 - nearest).mean(axis=1))
    return scores


def class_relative_z(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each score's robust z against the scores of its own class (MAD floored at the median class MAD)."""
    classes = np.unique(labels)
    medians = {c: float(np.median(scores[labels == c])) for c in classes}
    mads = {c: float(np.median(np.abs(scores[labels == c] - medians[c]))) * 1.4826 for c in classes}
    floor = float(np.median(list(mads.values()))) if mads else 0.0
    z = np.zeros(len(scores))
    for c in classes:
        members = labels == c
        scale = max(mads[c], floor)
        z[members] = (scores[members] - medians[c]) / scale if scale > 0 else 0.0
    return z


def reason(scores: np.ndarray, labels: np.ndarray, class_names: list[str], row: int, k: int = K) -> str:
    """Why ``row`` is flagged, in words a user can check against the thumbnails."""
    mine = labels == labels[row]
    name = class_names[int(labels[row])]
    beaten, others = int(np.sum(scores[mine] < scores[row])), int(np.sum(mine)) - 1
    typical = float(np.median(scores[mine]))
    return (
        f"farther from its {k} nearest images than {beaten} of the other {others} {name} images are from theirs "
        f"(mean cosine distance {scores[row]:.3g}, typical in {name} {typical:.3g}: {scores[row] / max(typical, 1e-12):.1f}x)"
    )
