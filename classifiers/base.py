"""The one interface every head implements: a scikit-learn classifier on CNN codes.

Every head is a ``BaseEstimator`` and ``ClassifierMixin``: ``__init__`` only stores
keyword settings, ``_parameter_constraints`` declares what each may be, ``fit`` learns
and returns ``self``, and fitted state ends in ``_`` (``classes_`` holds the class
labels as given to ``fit``, e.g. class names). So heads work with ``clone``,
``cross_val_predict``, ``GridSearchCV``, ``CalibratedClassifierCV`` and ``Pipeline``.

``X`` is a batch of feature maps ``(n, h, w, c)`` or of already pooled features
``(n, d)``, which a head reads as ``(n, 1, 1, d)`` maps.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.class_weight import compute_class_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, check_is_fitted, column_or_1d

from classifiers.errors import FeatureShapeError, SettingError
from classifiers.sk_compat import InvalidParameterError, StrOptions

HEAD_FILE = "head.json"
HISTORY_FILE = "history.json"
# ``class_weight`` as scikit-learn classifiers take it: None, "balanced" or {label: weight}.
CLASS_WEIGHT_CONSTRAINT: list = [StrOptions({"balanced"}), dict, None]


# How a head may reduce (n, h, w, c) maps to vectors; ``none`` (or None) keeps the maps.
POOLINGS = ("avg", "max", "flatten")


def pool_maps(maps: np.ndarray, pooling: str | None) -> np.ndarray:
    """(n, h, w, c) feature maps averaged (``avg``) or maxed (``max``) over the grid to (n, c),
    flattened (``flatten``) to (n, h*w*c), or as they are (``none`` or None)."""
    if pooling == "avg":
        return maps.mean(axis=(1, 2))
    if pooling == "max":
        return maps.max(axis=(1, 2))
    if pooling == "flatten":
        return maps.reshape(len(maps), -1)
    if pooling in (None, "none"):
        return maps
    raise SettingError(f"pooling={pooling!r} is unknown; use avg, max, flatten or none")


def class_key(label: Any) -> str:
    """A label as the class name it stands for: strings as they are, ints and numpy scalars by ``str``."""
    return label if isinstance(label, str) else str(label.item() if isinstance(label, np.generic) else label)


def class_columns(classes: np.ndarray, class_names: list[str]) -> np.ndarray:
    """The position in ``class_names`` of every label in ``classes``, matched by value (:func:`class_key`).

    Raises ``ValueError`` naming the labels that are not among the names, or that name one class twice.
    """
    position = {str(name): i for i, name in enumerate(class_names)}
    keys = [class_key(c) for c in np.asarray(classes).tolist()]
    missing = [key for key in keys if key not in position]
    if missing:
        raise ValueError(
            f"classes {', '.join(missing)} are not among the cache's classes ({', '.join(map(str, class_names))}); "
            "fit on labels that are the cache's class names"
        )
    if len(set(keys)) < len(keys):
        raise ValueError(f"classes {', '.join(keys)} name one class twice; fit on labels that are the cache's class names")
    return np.array([position[key] for key in keys], dtype=int)


class RowSource(Protocol):
    """Training rows that stay on disk and are read a few at a time (data larger than memory)."""

    labels: np.ndarray
    """(n,) class label of every row, in row order."""

    input_shape: tuple[int, ...]
    """(h, w, c) of one feature map."""

    def read(self, rows: np.ndarray) -> np.ndarray:
        """float32 features of the row positions ``rows`` (0..n-1), in that order."""


def classes_are(head: Head) -> str:
    """What ``head.json`` says its ``classes`` are: ``labels`` (matched by value) or, for old heads, ``indices``."""
    return "indices" if getattr(head, "_index_classes", False) else "labels"


def read_classes_are(meta: dict) -> str:
    """``classes_are`` of a saved head; files written before it was recorded held indices when they hold ints."""
    if "classes_are" in meta:
        return str(meta["classes_are"])
    return "indices" if all(isinstance(c, int) and not isinstance(c, bool) for c in meta["classes"]) else "labels"


class Head(ClassifierMixin, BaseEstimator):
    """Base class: parameter checks, label bookkeeping, input checks and the save/load layout."""

    name: ClassVar[str]
    model_file: ClassVar[str]
    _parameter_constraints: ClassVar[dict[str, list]] = {}

    def _store(self, arguments: dict[str, Any]) -> None:
        """What every head's ``__init__`` does with ``locals()``: keep each keyword setting as it came, nothing more."""
        for name in self._get_param_names():
            setattr(self, name, arguments[name])

    @classmethod
    def param_names(cls) -> list[str]:
        return sorted(cls._get_param_names())

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """Every setting with its default, as ``__init__`` declares it."""
        return cls().get_params()

    def set_params(self, **params: Any) -> Head:
        """scikit-learn's ``set_params`` (nested ``estimator__C`` included), with a one-line error naming this head's settings."""
        unknown = sorted(name for name in params if name.split("__", 1)[0] not in self.param_names())
        if unknown:
            raise SettingError(
                f"head {self.name!r} has no setting {', '.join(unknown)}; its settings are {', '.join(self.param_names())}"
            )
        return super().set_params(**params)

    def check_params(self) -> None:
        """Raise :class:`SettingError` with scikit-learn's one-line message for a value this head cannot use."""
        try:
            self._validate_params()
        except InvalidParameterError as error:
            raise SettingError(str(error)) from None

    # Learning -----------------------------------------------------------------

    def fit(self, X: np.ndarray, y: np.ndarray, *, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None) -> Head:
        raise NotImplementedError

    def fit_stream(self, source: RowSource, *, val: RowSource | None = None) -> Head:
        """Like ``fit`` for training data read from disk batch by batch."""
        raise NotImplementedError

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, X: np.ndarray) -> np.ndarray:
        columns = np.argmax(self.predict_proba(X), axis=1)
        return self.classes_[columns]

    def class_probabilities(self, X: np.ndarray, class_names: list[str]) -> np.ndarray:
        """``predict_proba`` with one column per name in ``class_names`` (a cache's classes); 0 for classes never seen.

        ``classes_`` are matched to the names by value (``3`` is the class ``"3"``), never
        used as positions: only heads saved before ``classes_`` held labels hold indices.
        """
        proba = self.predict_proba(X)
        out = np.zeros((len(proba), len(class_names)))
        if getattr(self, "_index_classes", False):
            out[:, self.classes_] = proba
            return out
        try:
            out[:, class_columns(self.classes_, class_names)] = proba
        except ValueError as error:
            raise FeatureShapeError(f"{self.name}: {error}") from None
        return out

    def to_keras(self):
        """A ``keras.Model`` from a (h, w, c) float32 features batch to class probabilities."""
        raise NotImplementedError

    # Shared helpers for subclasses -----------------------------------------------

    def _start_fit(self, y: np.ndarray, input_shape: tuple[int, ...]) -> np.ndarray:
        """Check settings and labels, record classes and input shape; return y as 0..k-1 column indices."""
        self.check_params()
        if y is None:
            raise SettingError(f"{type(self).__name__} requires y to be passed, but the target y is None")
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        self.classes_, columns = np.unique(y, return_inverse=True)
        self._index_classes = False
        if len(self.classes_) < 2:
            raise SettingError(
                f"{self.name}: the training data holds {len(self.classes_)} class; a classifier needs at least 2"
            )
        shape = tuple(int(d) for d in input_shape)
        self.input_shape_ = (1, 1, shape[0]) if len(shape) == 1 else shape
        self.n_features_in_ = int(np.prod(self.input_shape_))
        return columns

    def _validate_X(self, X: np.ndarray, *, fitting: bool = False) -> np.ndarray:
        """X as float32 maps (n, h, w, c): finite, non-empty, of the trained shape once fitted."""
        X = check_array(X, allow_nd=True, dtype=np.float32)
        if X.ndim == 2:
            X = X[:, None, None, :]
        elif X.ndim != 4:
            raise FeatureShapeError(
                f"{self.name}: features must be (n, h, w, c) maps or (n, d) pooled vectors, got shape {X.shape}"
            )
        if not fitting and tuple(X.shape[1:]) != self.input_shape_:
            if X.shape[1:3] == (1, 1) and self.input_shape_[:2] == (1, 1):
                raise FeatureShapeError(
                    f"X has {X.shape[3]} features, but {type(self).__name__} is expecting {self.n_features_in_} features as input."
                )
            raise FeatureShapeError(
                f"{self.name} head was trained on features of shape {self.input_shape_}, got {tuple(X.shape[1:])}; "
                "use a cache made with the same backbone and image size"
            )
        return X

    def _column(self, y: np.ndarray) -> np.ndarray:
        """Labels as column indices into ``classes_``; a label the head never saw is an error."""
        y = np.asarray(y)
        columns = np.searchsorted(self.classes_, y)
        columns = np.clip(columns, 0, len(self.classes_) - 1)
        unknown = self.classes_[columns] != y
        if np.any(unknown):
            raise SettingError(f"{self.name}: label {y[unknown][0]!r} is not among the training classes")
        return columns

    def _column_weights(self, columns: np.ndarray) -> dict[int, float] | None:
        """``class_weight`` (None, "balanced" or {label: weight}) as {column: weight}."""
        class_weight = getattr(self, "class_weight", None)
        if class_weight is None:
            return None
        if isinstance(class_weight, str):
            present = np.unique(columns)
            weights = compute_class_weight("balanced", classes=present, y=columns)
            return {int(c): float(w) for c, w in zip(present, weights)}
        return {column: float(class_weight.get(label, 1.0)) for column, label in enumerate(self.classes_.tolist())}

    def _check_fitted(self) -> None:
        check_is_fitted(self, "classes_")

    # Files ------------------------------------------------------------------------

    def _save_meta(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "head": self.name,
            "params": self.get_params(),
            "classes": self.classes_.tolist(),
            "classes_are": classes_are(self),
            "input_shape": list(self.input_shape_),
        }
        (folder / HEAD_FILE).write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        (folder / HISTORY_FILE).write_text(json.dumps(getattr(self, "history_", {}), indent=2) + "\n")

    @classmethod
    def _load_meta(cls, folder: Path) -> Head:
        meta = json.loads((folder / HEAD_FILE).read_text(encoding="utf-8"))
        head = cls(**meta["params"])
        head.classes_ = np.asarray(meta["classes"])
        head._index_classes = read_classes_are(meta) == "indices"
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

