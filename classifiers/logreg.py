"""``logreg``: standardised multinomial logistic regression (scikit-learn) on pooled or flattened features."""

from __future__ import annotations

from numbers import Integral, Real
from pathlib import Path
from typing import ClassVar

import joblib
import numpy as np

from classifiers.base import CLASS_WEIGHT_CONSTRAINT, POOLINGS, Head, RowSource, pool_maps
from classifiers.errors import SettingError
from classifiers.sk_compat import Interval, StrOptions

READ_ROWS = 1024
# Below this many feature values, scikit-learn's BLAS calls run on one thread: on pooled codes
# (a few hundred rows of 512) each call is microseconds, and waking a second thread costs more
# (measured on 210 x 512 digits, 2 busy cores: fit 0.6-1.4 s on 2 threads, 0.14-0.18 s on 1,
# the same coefficients bit for bit).
ONE_THREAD_VALUES = 1 << 22


def blas_threads(X: np.ndarray):
    """One BLAS thread for small ``X``, the library's default otherwise."""
    import contextlib

    if X.size >= ONE_THREAD_VALUES:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1, user_api="blas")


class LogRegHead(Head):
    """Multinomial ``LogisticRegression`` on standardised features.

    ``pooling``: avg or max over the spatial grid (c features), or flatten (h*w*c).
    """

    name = "logreg"
    model_file = "model.joblib"
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "C": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "pooling": [StrOptions(set(POOLINGS))],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "class_weight": CLASS_WEIGHT_CONSTRAINT,
    }

    def __init__(
        self,
        *,
        C: float = 1.0,
        max_iter: int = 1000,
        pooling: str = "avg",
        tol: float = 1e-4,
        class_weight: dict | str | None = None,
    ) -> None:
        self._store(locals())

    def _reduce(self, X: np.ndarray) -> np.ndarray:
        return pool_maps(X, self.pooling)

    def fit(self, X, y, *, X_val=None, y_val=None) -> LogRegHead:
        """Fit on ``X, y``; ``X_val, y_val`` only add the validation loss and accuracy to ``history_``."""
        self.check_params()
        X = self._validate_X(X, fitting=True)
        columns = self._start_fit(y, X.shape[1:])
        self._fit_reduced(self._reduce(X), columns)
        if X_val is not None:
            self._record_val(self._reduce(self._validate_X(X_val)), self._column(y_val))
        return self

    def fit_stream(self, source: RowSource, *, val: RowSource | None = None) -> LogRegHead:
        """Pools each block as it is read, so only (n, c) floats are ever in memory."""
        columns = self._start_fit(source.labels, source.input_shape)
        if self.pooling == "flatten":
            raise SettingError(
                "logreg: flattened features do not fit in memory for this cache; use --set pooling=avg (or max), "
                "which learns on pooled features read block by block"
            )
        self._fit_reduced(self._read_reduced(source), columns)
        if val is not None:
            self._record_val(self._read_reduced(val), self._column(val.labels))
        return self

    def _read_reduced(self, source: RowSource) -> np.ndarray:
        rows = np.arange(len(source.labels))
        return np.concatenate([self._reduce(source.read(rows[i : i + READ_ROWS])) for i in range(0, len(rows), READ_ROWS)])

    def _fit_reduced(self, X: np.ndarray, columns: np.ndarray) -> None:
        from sklearn.linear_model import LogisticRegression
        from sklearn.preprocessing import StandardScaler

        weights = self._column_weights(columns)
        sample_weight = None if weights is None else np.array([weights[c] for c in columns])
        self.scaler_ = StandardScaler().fit(X)
        self.model_ = LogisticRegression(C=self.C, max_iter=self.max_iter, tol=self.tol)
        with blas_threads(X):
            self.model_.fit(self.scaler_.transform(X), columns, sample_weight=sample_weight)
        self.n_iter_ = self.model_.n_iter_
        self.history_ = {"n_iter": [int(np.max(self.n_iter_))]}

    def _record_val(self, X_val: np.ndarray, columns: np.ndarray) -> None:
        from sklearn.metrics import log_loss

        proba = self.model_.predict_proba(self.scaler_.transform(X_val))
        self.history_["val_loss"] = [float(log_loss(columns, proba, labels=np.arange(len(self.classes_))))]
        self.history_["val_accuracy"] = [float(np.mean(np.argmax(proba, axis=1) == columns))]

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = self._reduce(self._validate_X(X))
        proba = self.model_.predict_proba(self.scaler_.transform(X)).astype(np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # float32 inputs give float32 rows that drift from 1

    def folded_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """(d, k) kernel and (k,) bias of softmax(x @ W + b) equal to ``predict_proba`` on reduced x.

        Standardisation folds in: ((x - m) / s) @ A + a = x @ (A / s) + (a - (m / s) @ A).
        A binary model's single logit z becomes the pair (0, z): softmax of it is (1 - sigmoid(z), sigmoid(z)).
        """
        coef, intercept = self.model_.coef_, self.model_.intercept_
        if coef.shape[0] == 1:
            coef = np.vstack([np.zeros_like(coef), coef])
            intercept = np.concatenate([[0.0], intercept])
        kernel = coef.T / self.scaler_.scale_[:, None]
        bias = intercept - self.scaler_.mean_ @ kernel
        return kernel.astype(np.float32), bias.astype(np.float32)

    def to_keras(self):
        import keras

        inputs = keras.Input(shape=self.input_shape_, name="features")
        pool = {"avg": keras.layers.GlobalAveragePooling2D, "max": keras.layers.GlobalMaxPooling2D, "flatten": keras.layers.Flatten}
        x = pool[self.pooling]()(inputs)
        dense = keras.layers.Dense(len(self.classes_), activation="softmax", name="probabilities")
        outputs = dense(x)
        dense.set_weights(list(self.folded_weights()))
        return keras.Model(inputs, outputs, name="logreg_head")

    def save(self, folder: Path) -> None:
        self._save_meta(folder)
        joblib.dump({"scaler": self.scaler_, "model": self.model_}, folder / self.model_file)

    @classmethod
    def load(cls, folder: Path) -> LogRegHead:
        head = cls._load_meta(folder)
        state = joblib.load(folder / cls.model_file)
        head.scaler_, head.model_ = state["scaler"], state["model"]
        head.n_iter_ = head.model_.n_iter_
        return head
