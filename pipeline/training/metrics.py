"""The numbers a run is judged by, computed the same way for every head and split."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def evaluate(y_true: np.ndarray, proba: np.ndarray, class_names: Sequence[str]) -> dict:
    """Accuracy, macro F1, log loss, per-class precision/recall/F1 and the confusion matrix.

    ``y_true`` are class indices into ``class_names``; ``proba`` has one column per class.
    Classes absent from ``y_true`` still get a row (support 0), so splits compare cell by cell.
    Macro F1 averages over the classes present or predicted, as ``f1_score(average="macro")``
    does: a class predicted but absent counts with F1 0, a class neither present nor predicted
    is left out (its F1 is undefined, not 0).
    """
    from sklearn.metrics import confusion_matrix, log_loss, precision_recall_fscore_support

    labels = np.arange(len(class_names))
    predicted = np.argmax(proba, axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, predicted, labels=labels, zero_division=0
    )
    scored = (support > 0) | np.isin(labels, predicted)
    return {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(predicted == y_true)),
        "macro_f1": float(np.mean(f1[scored])),
        "log_loss": float(log_loss(y_true, proba, labels=labels)),  # sklearn clips to [eps, 1 - eps] itself
        "per_class": {
            name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)
        },
        "confusion_matrix": confusion_matrix(y_true, predicted, labels=labels).tolist(),
    }
