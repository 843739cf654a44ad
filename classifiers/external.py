"""``sklearn``: any fitted scikit-learn classifier as a head, so notebook experiments become runs.

The estimator sees the cache's features pooled over the grid (``avg`` or ``max``) or
flattened; ``report``, ``runs``, ``evaluate`` and ``predict`` treat it like any head.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

import joblib
import numpy as np

from classifiers.base import HEAD_FILE, HISTORY_FILE, POOLINGS, Head, classes_are, pool_maps
from classifiers.errors import SettingError
from classifiers.sk_compat import HasMethods, StrOptions


class EstimatorHead(Head):
    """A fitted scikit-learn classifier (with ``predict_proba``) on pooled, flattened or ("none") the maps as they are."""

    name = "sklearn"
    model_file = "model.joblib"
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "estimator": [HasMethods(["fit", "predict_proba"])],
        "pooling": [StrOptions({*POOLINGS, "none"})],
    }

    def __init__(self, *, estimator: Any = None, pooling: str = "avg") -> None:
        self._store(locals())

    def _reduce(self, X: np.ndarray) -> np.ndarray:
        return pool_maps(X, self.pooling)

    def fit(self, X, y, *, X_val=None, y_val=None) -> EstimatorHead:
        from sklearn.base import clone

        self.check_params()
        X = self._validate_X(X, fitting=True)
        self._start_fit(y, X.shape[1:])
        self.estimator_ = clone(self.estimator).fit(self._reduce(X), np.asarray(y))
        return self._adopt_classes()

    def adopt(self, input_shape: tuple[int, ...]) -> EstimatorHead:
        """Wrap ``estimator`` as already fitted on features of one map shape ``input_shape``."""
        self.check_params()
        if not hasattr(self.estimator, "classes_"):
            raise SettingError(f"{type(self.estimator).__name__} is not fitted; call its fit first")
        self.estimator_ = self.estimator
        shape = tuple(int(d) for d in input_shape)
        self.input_shape_ = (1, 1, shape[0]) if len(shape) == 1 else shape
        self.n_features_in_ = int(np.prod(self.input_shape_))
        return self._adopt_classes()

    def _adopt_classes(self) -> EstimatorHead:
        self.classes_ = np.asarray(self.estimator_.classes_)
        self._index_classes = False  # an estimator's classes_ are its labels, whatever their type
        self.history_ = {}
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        proba = np.asarray(self.estimator_.predict_proba(self._reduce(self._validate_X(X))), dtype=np.float64)
        return proba / proba.sum(axis=1, keepdims=True)

    def to_keras(self):
        raise SettingError(
            f"a {type(self.estimator_).__name__} head cannot be exported as a Keras model; "
            "train a dense, gap or logreg head to export"
        )

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "head": self.name,
            "params": {"pooling": self.pooling},
            "estimator": repr(self.estimator_),
            "classes": self.classes_.tolist(),
            "classes_are": classes_are(self),
            "input_shape": list(self.input_shape_),
        }
        (folder / HEAD_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (folder / HISTORY_FILE).write_text("{}\n")
        joblib.dump(self.estimator_, folder / self.model_file)

    @classmethod
    def load(cls, folder: Path) -> EstimatorHead:
        head = cls._load_meta(folder)
        head.estimator = head.estimator_ = joblib.load(folder / cls.model_file)
        return head
