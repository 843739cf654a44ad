"""Likely label errors, ranked straight from a feature cache.

Every labelled image gets an out-of-fold predicted probability vector: k-fold
cross-validation of a cheap head on the cached features, so no image is scored by a
model that saw its label. Images whose given label the model finds least likely come
first (confident learning, Northcutt et al. 2021): ranked by self-confidence
``p[given]`` or by the normalised margin ``p[given] - max(p[other])``. An image is also
*flagged* when some other class ``j`` reaches that class's threshold, the mean
``p[j]`` over the images labelled ``j`` (an off-diagonal entry of the confident joint).
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from pipeline import html_page
from pipeline.errors import PipelineError

RANKINGS = ("self_confidence", "margin")
CSV_COLUMNS = ("rank", "path", "split", "given", "suggested", "self_confidence", "margin", "flagged")


@dataclasses.dataclass
class AuditResult:
    cache: Path
    head: str
    folds: int
    ranking: str
    class_names: list[str]
    paths: list[str]
    splits: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    order: np.ndarray
    flagged: np.ndarray
    data_root: Path
    csv: Path | None = None
    html: Path | None = None

    @property
    def suggested(self) -> np.ndarray:
        return np.argmax(self.probabilities, axis=1)

    @property
    def self_confidence(self) -> np.ndarray:
        return self.probabilities[np.arange(len(self.labels)), self.labels]

    @property
    def margin(self) -> np.ndarray:
        others = self.probabilities.copy()
        others[np.arange(len(self.labels)), self.labels] = -np.inf
        return self.self_confidence - others.max(axis=1)

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.suggested == self.labels))


def out_of_fold_probabilities(
    X: np.ndarray, y: np.ndarray, n_classes: int, head: str, params: dict, folds: int, seed: int
) -> np.ndarray:
    """(n, n_classes) probabilities, each row from the fold model that did not train on it."""
    from sklearn.model_selection import StratifiedKFold

    from classifiers import HEADS

    if head not in HEADS:
        raise PipelineError(f"unknown head {head!r}; use one of {', '.join(HEADS)}")
    probabilities = np.zeros((len(y), n_classes))
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, held_out in splitter.split(np.zeros(len(y)), y):
        model = HEADS[head](**params).fit(X[train], y[train])
        probabilities[np.ix_(held_out, model.classes_)] = model.predict_proba(X[held_out])
    return probabilities


def confident_joint_flags(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """True where another class clears its per-class threshold (mean self-confidence of that class)."""
    n_classes = probabilities.shape[1]
    thresholds = np.array(
        [probabilities[labels == j, j].mean() if np.any(labels == j) else np.inf for j in range(n_classes)]
    )
    above = probabilities >= thresholds
    above[np.arange(len(labels)), labels] = False
    return above.any(axis=1)


def check_folds(labels: np.ndarray, class_names: list[str], folds: int) -> None:
    if folds < 2:
        raise PipelineError(f"--folds {folds}: cross-validation needs at least 2 folds")
    counts = np.bincount(labels, minlength=len(class_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] < folds:
        raise PipelineError(
            f"class {class_names[smallest]!r} has {counts[smallest]} images, fewer than --folds {folds}; "
            f"pass --folds {max(2, int(counts[smallest]))} or add images to it"
        )


def run_audit(
    cache_path: str | Path,
    *,
    head: str = "logreg",
    params: dict | None = None,
    folds: int = 5,
    ranking: str = "self_confidence",
    seed: int = 0,
) -> AuditResult:
    """Score every labelled image of the cache and rank them, most suspicious first."""
    from features_cache.errors import CacheError
    from features_cache.reader import FeatureCache

    if ranking not in RANKINGS:
        raise PipelineError(f"--rank {ranking}: unknown ranking; use one of {', '.join(RANKINGS)}")
    try:
        with FeatureCache(cache_path) as cache:
            class_names, labels = cache.class_names, cache.labels
            check_folds(labels, class_names, folds)
            X = cache.features()
            paths, splits, data_root = cache.paths, [str(s) for s in cache.splits], cache.data_root
    except CacheError as error:
        raise PipelineError(str(error)) from None
    probabilities = out_of_fold_probabilities(X, labels, len(class_names), head, dict(params or {}), folds, seed)
    result = AuditResult(
        cache=Path(cache_path),
        head=head,
        folds=folds,
        ranking=ranking,
        class_names=class_names,
        paths=paths,
        splits=splits,
        labels=labels,
        probabilities=probabilities,
        order=np.empty(0, dtype=np.int64),
        flagged=confident_joint_flags(probabilities, labels),
        data_root=data_root,
    )
    score = result.self_confidence if ranking == "self_confidence" else result.margin
    result.order = np.lexsort((np.arange(len(score)), score))
    return result


def write_csv(result: AuditResult, path: Path) -> Path:
    suggested, confidence, margin = result.suggested, result.self_confidence, result.margin
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for rank, i in enumerate(result.order, start=1):
            writer.writerow(
                [
                    rank,
                    result.paths[i],
                    result.splits[i],
                    result.class_names[result.labels[i]],
                    result.class_names[suggested[i]],
                    f"{confidence[i]:.6f}",
                    f"{margin[i]:.6f}",
                    int(result.flagged[i]),
                ]
            )
    tmp.replace(path)
    result.csv = path
    return path


def write_html(result: AuditResult, path: Path, show: int) -> Path:
    suggested, confidence = result.suggested, result.self_confidence
    cards = [
        html_page.Card(
            result.paths[i],
            result.data_root / result.paths[i],
            (
                f"given: {result.class_names[result.labels[i]]} ({confidence[i]:.1%})",
                f"suggested: {result.class_names[suggested[i]]} ({result.probabilities[i, suggested[i]]:.1%})",
                "flagged by confident learning" if result.flagged[i] else "not flagged",
            ),
        )
        for i in result.order[:show]
    ]
    n = len(result.class_names)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (result.labels, suggested), 1)
    page = html_page.render_page(
        f"Likely label errors in {result.cache.name}",
        summary_lines(result),
        [
            (f"The {len(cards)} least likely labels, most suspicious first", html_page.cards_html(cards)),
            ("Given label (rows) against out-of-fold prediction (columns)", html_page.confusion_svg(confusion, result.class_names)),
            ("Per-class out-of-fold metrics", html_page.metrics_table(html_page.per_class_metrics(confusion, result.class_names))),
        ],
    )
    result.html = html_page.write_page(path, page)
    return path


def summary_lines(result: AuditResult) -> list[str]:
    return [
        f"{len(result.labels)} labelled images, {result.folds}-fold out-of-fold predictions of the {result.head} head, "
        f"ranked by {result.ranking.replace('_', '-')}",
        f"out-of-fold accuracy {result.accuracy:.1%}; {int(result.flagged.sum())} images flagged by confident learning",
    ]
