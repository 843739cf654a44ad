"""The one interface every head implements, in the spirit of scikit-learn estimators.

``__init__`` only stores keyword settings; ``fit`` learns and returns ``self``; what
was learned lives in attributes ending in ``_``. A new head is a subclass that
declares its settings in ``__init__`` and fills in ``fit``/``fit_stream``/
``predict_proba``/``save``/``load``/``to_keras``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from pipeline.errors import PipelineError

HEAD_FILE = "head.json"
HISTORY_FILE = "history.json"


class SettingError(PipelineError):
    """An unknown setting or a value a head cannot use; shown as a one-line error."""


class RowSource(Protocol):
    """Training rows that stay on disk and are read a few at a time (data larger than memory)."""

    labels: np.ndarray
    """(n,) class index of every row, in row order."""

    input_shape: tuple[int, ...]
    """(h, w, c) of one feature map."""

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 features of the row positions ``rows`` (0..n-1), in that order."""


class Head:
    """Base class: settings handling, label bookkeeping and the save/load file layout."""

    name: ClassVar[str]
    model_file: ClassVar[str]

    def get_params(self) -> dict[str, Any]:
        """Every setting, defaults included, as passed to ``__init__``."""
        return {key: getattr(self, key) for key in self.param_names()}

    def set_params(self, **params: Any) -> Head:
        unknown = sorted(set(params) - set(self.param_names()))
        if unknown:
            raise SettingError(
                f"head {self.name!r} has no setting {', '.join(unknown)}; its settings are {', '.join(self.param_names())}"
            )
        for key, value in params.items():
            setattr(self, key, value)
        return self

    @classmethod
    def param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p.name for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        signature = inspect.signature(cls.__init__)
        return {p.name: p.default for p in signature.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}

    def check_params(self) -> None:
        """Raise :class:`SettingError` for values this head cannot use (called before any work)."""
        for key, default in self.defaults().items():
            value = getattr(self, key)
            if isinstance(default, (int, float)) and not isinstance(default, bool) and value < 0:
                raise SettingError(f"{self.name} setting {key}={value} must not be negative")

    # Learning -----------------------------------------------------------------

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        *,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        class_weight: dict[int, float] | None = None,
    ) -> Head:
        raise NotImplementedError

    def fit_stream(
        self, source: RowSource, *, val: RowSource | None = None, class_weight: dict[int, float] | None = None
    ) -> Head:
        """Like ``fit`` for training data read from disk batch by batch."""
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.classes_[np.argmax(self.predict_proba(X), axis=1)]

    def to_keras(self):
        """A ``keras.Model`` from a (h, w, c) float32 features batch to class probabilities."""
        raise NotImplementedError

    # Shared helpers for subclasses -----------------------------------------------

    def _start_fit(self, y: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
        """Check settings, record classes and input shape; return y as 0..k-1 column indices."""
        self.check_params()
        self.classes_ = np.unique(np.asarray(y, dtype=np.int64))
        if len(self.classes_) < 2:
            raise SettingError(f"{self.name}: training data has {len(self.classes_)} class; at least 2 are needed")
        self.input_shape_ = tuple(int(d) for d in input_shape)
        self.n_features_in_ = int(np.prod(self.input_shape_))
        return self._column(y)

    def _column(self, y: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.classes_, np.asarray(y, dtype=np.int64))

    def _column_weights(self, class_weight: dict[int, float] | None) -> dict[int, float] | None:
        if class_weight is None:
            return None
        return {column: float(class_weight.get(int(label), 1.0)) for column, label in enumerate(self.classes_)}

    def _check_input(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if tuple(X.shape[1:]) != self.input_shape_:
            raise PipelineError(
                f"{self.name} head was trained on features of shape {self.input_shape_}, got {tuple(X.shape[1:])}; "
                "use a cache made with the same backbone and image size"
            )
        return X

    # Files ------------------------------------------------------------------------

    def _save_meta(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "head": self.name,
            "params": self.get_params(),
            "classes": self.classes_.tolist(),
            "input_shape": list(self.input_shape_),
        }
        (folder / HEAD_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        (folder / HISTORY_FILE).write_text(json.dumps(getattr(self, "history_", {}), indent=2) + "\n")

    @classmethod
    def _load_meta(cls, folder: Path) -> Head:
        meta = json.loads((folder / HEAD_FILE).read_text())
        head = cls(**meta["params"])
        head.classes_ = np.asarray(meta["classes"], dtype=np.int64)
        head.input_shape_ = tuple(meta["input_shape"])
        head.n_features_in_ = int(np.prod(head.input_shape_))
        history = folder / HISTORY_FILE
        head.history_ = json.loads(history.read_text()) if history.exists() else {}
        return head

    def save(self, folder: Path) -> None:
        raise NotImplementedError

    @classmethod
    def load(cls, folder: Path) -> Head:
        raise NotImplementedError

    def __repr__(self) -> str:
        settings = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({settings})"
