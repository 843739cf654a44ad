"""The health report's CSV files, one per section, in ``CACHE.audit/``."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

from features_cache import atomic
from pipeline.health import outliers

DUPLICATES = "duplicates.csv"
LEAKAGE = "leakage.csv"
OUTLIERS = "outliers.csv"
LABEL_ISSUES = "label_issues.csv"
CLASSES = "classes.csv"


def write_rows(path: Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write atomically, so a reader never sees half a file."""
    with atomic.open_replacing(path, newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_all(result, folder: Path) -> dict[str, Path]:
    """Every section's CSV; returns them by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths, splits, names = result.paths, result.splits, result.class_names
    group_of = {i: number for number, group in enumerate(result.groups, start=1) for i in group}
    written = {
        DUPLICATES: write_rows(
            folder / DUPLICATES,
            ("path_a", "path_b", "similarity", "split_a", "split_b", "group"),
            (
                (paths[p.a], paths[p.b], f"{p.similarity:.4f}", splits[p.a], splits[p.b], group_of[p.a])
                for p in result.pairs
            ),
        ),
        LEAKAGE: write_rows(
            folder / LEAKAGE,
            ("path", "split", "train_twin", "similarity", "group"),
            (
                (paths[leak.row], splits[leak.row], paths[leak.twin], f"{leak.similarity:.4f}", group_of[leak.row])
                for leak in result.leaks
            ),
        ),
        OUTLIERS: write_rows(
            folder / OUTLIERS,
            ("rank", "path", "split", "label", "knn_distance", "robust_z", "reason"),
            (
                (
                    rank, paths[i], splits[i], names[result.labels[i]], f"{result.outlier_scores[i]:.4f}",
                    f"{result.outlier_z[i]:.2f}", outliers.reason(result.outlier_scores, result.labels, names, i),
                )
                for rank, i in enumerate(result.outlier_rows, start=1)
            ),
        ),
        LABEL_ISSUES: write_rows(
            folder / LABEL_ISSUES,
            ("rank", "path", "split", "given", "suggested", "self_confidence", "margin", "flagged"),
            (
                (
                    rank, paths[i], splits[i], names[result.labels[i]], names[result.suggested[i]],
                    f"{result.self_confidence[i]:.6f}", f"{result.margin[i]:.6f}", int(result.flagged[i]),
                )
                for rank, i in enumerate(result.order, start=1)
            ),
        ),
    }
    split_names = sorted({key for row in result.balance.values() for key in row if key != "all"})
    written[CLASSES] = write_rows(
        folder / CLASSES,
        ("class", "all", *split_names),
        ((name, row["all"], *(row.get(split, 0) for split in split_names)) for name, row in result.balance.items()),
    )
    return written
