"""``pipeline audit``: the health of a data set, straight from its feature cache.

Four sections, each with counts and a ranked list: near-duplicates (and leakage, as
:mod:`pipeline.health.leakage` defines it), outliers, likely label errors (confident learning on out-of-fold
probabilities) and class balance. Everything is computed from the cached codes, pooled
to one vector per image, in seconds; the images are only opened for thumbnails.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.health import balance, duplicates, labels, leakage, outliers
from pipeline.health.embeddings import pooled, unit_rows
from pipeline.health.pixels import Thumbnails


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
    pairs: list[duplicates.Pair]
    groups: list[list[int]]
    outlier_scores: np.ndarray
    outlier_z: np.ndarray
    balance: dict[str, dict[str, int]]
    threshold: float
    stored_splits: list[str] = dataclasses.field(default_factory=list)
    """The splits the data itself gives (folders, CSV column): what a reviewed manifest keeps."""

    @property
    def suggested(self) -> np.ndarray:
        return np.argmax(self.probabilities, axis=1)

    @property
    def self_confidence(self) -> np.ndarray:
        return self.probabilities[np.arange(len(self.labels)), self.labels]

    @property
    def margin(self) -> np.ndarray:
        return labels.ranking_scores(self.probabilities, self.labels, "margin")

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.suggested == self.labels))

    @property
    def leaking_groups(self) -> list[list[int]]:
        """Groups that span splits: exactly those with a pair across splits (groups are chained)."""
        return [group for group in self.groups if duplicates.spans_splits(group, self.splits)]

    @property
    def leaks(self) -> list[leakage.Leak]:
        """Val and test images with a near-duplicate in train: ``train``'s warning and ``leakage.csv``."""
        return leakage.leaks(self.pairs, self.splits)

    @property
    def outlier_rows(self) -> np.ndarray:
        """Outliers, the most atypical for their class first."""
        rows = np.flatnonzero(self.outlier_z > outliers.Z_THRESHOLD)
        return rows[np.argsort(-self.outlier_z[rows], kind="stable")]

    @property
    def issue_rows(self) -> np.ndarray:
        """Label issues in ranking order."""
        return np.array([i for i in self.order if self.flagged[i]], dtype=np.int64)

    def summary(self) -> str:
        counts = leakage.leak_counts(self.leaks, self.splits)
        return (
            f"{len(self.pairs)} near-duplicate pairs in {len(self.groups)} near-duplicate groups "
            f"({len(self.leaking_groups)} across splits; {counts['val']} val and {counts['test']} test images "
            "have a near-duplicate in train), "
            f"{len(self.outlier_rows)} outlier candidates, {int(self.flagged.sum())} likely label errors"
        )


def check_folds(label_ids: np.ndarray, class_names: list[str], folds: int) -> None:
    if folds < 2:
        raise PipelineError(f"--folds {folds}: cross-validation needs at least 2 folds")
    counts = np.bincount(label_ids, minlength=len(class_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] < folds:
        raise PipelineError(
            f"class {class_names[smallest]!r} has {counts[smallest]} images, fewer than --folds {folds}; "
            f"pass --folds {max(2, int(counts[smallest]))} or add images to it"
        )


def head_estimator(head: str, params: dict, rows: int | None = None):
    """The estimator cross-validated for label issues: a head on the pooled codes (``logreg``: on them made
    unit length, see :mod:`pipeline.health.labels`)."""
    from classifiers import HEAD_NAMES, get_head

    if head not in HEAD_NAMES:
        raise PipelineError(f"unknown head {head!r}; use one of {', '.join(HEAD_NAMES)}")
    if head == "logreg":
        settings = dict(params)
        if settings.pop("pooling", "avg") != "avg":
            raise PipelineError("--set pooling: the audit works on average-pooled codes; leave pooling out")
        return labels.unit_row_estimator(**settings, rows=rows)
    estimator = get_head(head)(**params)
    if "verbose" in estimator.get_params():
        estimator.set_params(verbose=0)
    return estimator


def run_audit(
    cache_path: str | Path,
    *,
    head: str = "logreg",
    params: dict | None = None,
    folds: int = 5,
    ranking: str = "self_confidence",
    seed: int = 0,
    threshold: float = duplicates.DEFAULT_THRESHOLD,
) -> AuditResult:
    """Every section of the health report for the cache at ``cache_path``."""
    from features_cache.errors import CacheError
    from features_cache.reader import FeatureCache
    from pipeline.training.splits import plan_cache_splits

    if ranking not in labels.RANKINGS:
        raise PipelineError(f"--rank {ranking}: unknown ranking; use one of {', '.join(labels.RANKINGS)}")
    if not 0 < threshold <= 1:
        raise PipelineError(f"--threshold {threshold}: a cosine similarity in (0, 1], e.g. 0.80")
    try:
        with FeatureCache(cache_path) as cache:
            class_names, label_ids = cache.class_names, cache.labels
            check_folds(label_ids, class_names, folds)
            X = pooled(cache)
            planned = plan_cache_splits(cache, remember=False).splits if len(class_names) > 1 else cache.splits
            splits = [str(s) for s in planned]
            paths, data_root, stored = cache.paths, cache.data_root, [str(s) for s in cache.splits]
            content_hashes = [record.content_hash for record in cache.records()]
    except CacheError as error:
        raise PipelineError(str(error)) from None
    unit = unit_rows(X)
    estimator = head_estimator(head, dict(params or {}), len(X))
    pairs = leakage.find_pairs(unit, content_hashes, Thumbnails(data_root, paths), threshold)
    near = duplicates.groups(pairs, len(paths))
    fold_groups = duplicates.fold_groups(content_hashes, near)
    probabilities = labels.out_of_fold_probabilities(X, label_ids, estimator, folds, seed, fold_groups)
    scores = outliers.class_knn_distance(outliers.raw_unit_rows(X), label_ids, seed=seed, groups=fold_groups)
    score = labels.ranking_scores(probabilities, label_ids, ranking)
    order = np.lexsort((np.arange(len(score)), score))
    return AuditResult(
        cache=Path(cache_path),
        head=head,
        folds=folds,
        ranking=ranking,
        class_names=class_names,
        paths=paths,
        splits=splits,
        labels=label_ids,
        probabilities=probabilities,
        order=order,
        flagged=labels.lowest_flagged(probabilities, label_ids, score),
        data_root=data_root,
        pairs=pairs,
        groups=near,
        outlier_scores=scores,
        outlier_z=outliers.class_relative_z(scores, label_ids),
        balance=balance.counts(label_ids, splits, class_names),
        threshold=threshold,
        stored_splits=stored,
    )


def summary_lines(result: AuditResult) -> list[str]:
    return [
        result.summary(),
        f"{len(result.labels)} labelled images; label issues from {result.folds}-fold out-of-fold predictions of the "
        f"{result.head} head (out-of-fold accuracy {result.accuracy:.1%}), ranked by {result.ranking.replace('_', '-')}",
        *balance.warnings(result.balance),
    ]
