"""What the Keras heads share: seeded deterministic training, callbacks, streaming, files.

A subclass only declares its settings and stacks its own layers in ``body``; the
shared ones (standardisation, dropout, the softmax layer) are added around them. With
``standardize`` (the default) the model starts with a Normalization layer holding the
training features' per-channel mean and variance: codes from randomly initialised or
unusual backbones can be tiny and nearly constant, and the layer makes the learning
rate mean the same thing on any cache (logreg standardises for the same reason).

Keras is imported inside the methods that build, train or load a model, never at import:
the class and its settings (``defaults()``, what ``runs`` shows) cost no Keras start-up.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterable
from numbers import Integral, Real
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from classifiers.base import CLASS_WEIGHT_CONSTRAINT, Head, RowSource
from classifiers.compile_cache import use_compile_cache
from classifiers.errors import SettingError
from classifiers.sk_compat import Interval, StrOptions
from classifiers.tf_quiet import import_keras

if TYPE_CHECKING:
    import keras

OPTIMIZERS = ("rmsprop", "adam", "sgd")
PREDICT_BATCH = 1024
# XLA fuses the optimizer's element-wise update over Dense(256)'s 6.4M weights, the bulk of
# each step on a CPU; several steps per call remove Keras's per-step overhead, which dominates
# the tiny gap head. Measured on 1,400 rows of 7x7x512, 2 cores: dense 20 epochs 82 s -> 46 s,
# gap 30 epochs 13 s -> 9 s.
JIT_COMPILE = {"tensorflow": True}
STEPS_PER_EXECUTION = 32
# Grid cells per float64 slice in ``channel_stats`` (4 MiB at 512 channels): cache-sized, not a 2x copy of X.
STATS_ROWS = 1024
# Validation rows per step: one step per epoch for a usual val split, instead of one per training batch.
VAL_BATCH = 1024
# Relative variance below which a channel counts as constant in training (scaled by 1, not 1/std).
CONSTANT_VARIANCE = 1e-10
# Where inputs move in training, the least a channel's variance may be, relative to the median channel's:
# at most a tenfold scale-up over a typical channel.
MOVING_VARIANCE_FLOOR = 1e-2


def seed_everything(seed: int) -> None:
    """Same seed, same weights and shuffles.

    On a CPU, TensorFlow's kernels and XLA are deterministic already (checked: two runs,
    identical probabilities), so XLA stays on; on a GPU, TensorFlow's op determinism is
    switched on, which makes Keras train without XLA there.
    """
    import keras

    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.enable_op_determinism()


def channel_stats(blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance over every row and grid cell, accumulated block by block.

    A channel that is (nearly) constant in training gets variance 1, as scikit-learn's
    ``StandardScaler`` gives it scale 1: dividing by ~0 would turn a tiny activation at
    test time into a huge input.
    """
    total = squares = None
    count = 0
    for block in blocks:
        flat = block.reshape(-1, block.shape[-1])
        for start in range(0, len(flat), STATS_ROWS):  # float64 a slice at a time, not a float64 copy of the block
            part = flat[start : start + STATS_ROWS].astype(np.float64)
            total = part.sum(axis=0) if total is None else total + part.sum(axis=0)
            squares = (part**2).sum(axis=0) if squares is None else squares + (part**2).sum(axis=0)
        count += len(flat)
    mean = total / count
    variance = np.maximum(squares / count - mean**2, 0)
    constant = variance <= CONSTANT_VARIANCE * np.maximum(mean**2, 1.0)
    variance[constant] = 1.0
    return mean.astype(np.float32), variance.astype(np.float32)


# The last read-only array standardised, and its statistics: see ``standardisation``.
_LAST_STATS: dict[int, tuple[weakref.ref, tuple[np.ndarray, np.ndarray]]] = {}


def floored(variance: np.ndarray, floor: float = MOVING_VARIANCE_FLOOR) -> np.ndarray:
    """``variance`` with no channel below ``floor`` times the median channel's.

    For inputs that move while the model trains (a fine-tuned block's output): a channel nearly
    silent when the statistics were taken (real VGG16 block5 outputs hold channels at 1e-6 of the
    median variance) would be scaled up a thousandfold once the block's weights move it, and SGD
    then diverges to NaN in the first epoch. Frozen inputs keep their exact variances.
    """
    return np.maximum(variance, np.float32(floor) * np.median(variance)).astype(np.float32)


def standardisation(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``channel_stats`` of ``X``, computed once per read-only array.

    ``train`` loads a sweep's features once and marks them read-only, so the runs of a
    ``--set`` sweep share one pass over them; a writeable array may have changed since, and
    is measured again.
    """
    if X.flags.writeable:
        return channel_stats([X])
    known = _LAST_STATS.get(id(X))
    if known is not None and known[0]() is X:
        return known[1]
    stats = channel_stats([X])
    _LAST_STATS.clear()
    _LAST_STATS[id(X)] = (weakref.ref(X), stats)
    return stats


class KerasHead(Head):
    """A small Keras model on the features, trained with sparse categorical cross-entropy."""

    model_file = "model.keras"
    _parameter_constraints: ClassVar[dict[str, list]] = {
        "dropout": [Interval(Real, 0, 1, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "optimizer": [StrOptions(set(OPTIMIZERS))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left")],
        "early_stopping": [Interval(Integral, 0, None, closed="left")],
        "reduce_lr": [Interval(Integral, 0, None, closed="left")],
        "standardize": ["boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "class_weight": CLASS_WEIGHT_CONSTRAINT,
        "verbose": [StrOptions({"auto"}), Interval(Integral, 0, 2, closed="both")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "jit_compile": [StrOptions({"auto"}), "boolean"],
    }

    def body(self, x):
        """The head's own layers, from (standardised) feature maps ``x`` to one vector per image."""
        raise NotImplementedError

    def build(self, n_classes: int, mean: np.ndarray, variance: np.ndarray) -> keras.Model:
        """Normalization (with ``standardize``) -> ``body`` -> Dropout (when ``dropout``) -> Dense softmax."""
        import keras

        inputs = keras.Input(shape=self.input_shape_, name="features")
        x = keras.layers.Normalization(axis=-1, mean=mean, variance=variance)(inputs) if self.standardize else inputs
        x = self.body(x)
        if self.dropout:
            x = keras.layers.Dropout(self.dropout, seed=self.seed)(x)
        outputs = keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
        return keras.Model(inputs, outputs, name=f"{self.name}_head")

    def fit(self, X, y, *, X_val=None, y_val=None, views: np.ndarray | None = None) -> KerasHead:
        """Train on ``X, y``; ``X_val, y_val`` are watched by early stopping and ``reduce_lr`` and kept in the history.

        Without them, early stopping and ``reduce_lr`` hold out ``validation_fraction`` of the
        training rows (stratified, seeded), as scikit-learn's ``MLPClassifier`` does. ``views``
        (n, k, h, w, c): augmented views of the training images, one drawn per image each epoch.
        """
        import_keras()
        if views is not None:
            return self._fit_views(X, y, X_val, y_val, views)
        self.check_params()
        X = self._validate_X(X, fitting=True)
        columns = self._start_fit(y, X.shape[1:])
        val = None
        if X_val is not None:
            val = (self._validate_X(X_val), self._column(y_val))
        elif self.early_stopping or self.reduce_lr:
            X, columns, val = self._hold_out(X, columns)
        self._train(X, columns, val, standardisation(X) if self.standardize else None)
        return self

    def _fit_views(self, X, y, X_val, y_val, views: np.ndarray) -> KerasHead:
        from classifiers.keras_views import ViewBatches

        self.check_params()
        X = self._validate_X(X, fitting=True)
        columns = self._start_fit(y, X.shape[1:])
        if X_val is None and (self.early_stopping or self.reduce_lr):
            raise SettingError(f"{self.name}: with views, early_stopping and reduce_lr need validation rows (X_val, y_val)")
        val = None if X_val is None else (self._validate_X(X_val), self._column(y_val))
        batches = ViewBatches(X, np.asarray(views), columns, self.batch_size, self.seed, "one")
        self._train(batches, columns, val, standardisation(X) if self.standardize else None, streamed=True)
        return self

    def _hold_out(self, X: np.ndarray, columns: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple]:
        from sklearn.model_selection import train_test_split

        counts = np.bincount(columns)
        stratify = columns if counts.min() >= 2 and round(self.validation_fraction * len(X)) >= len(counts) else None
        X_fit, X_val, y_fit, y_val = train_test_split(
            X, columns, test_size=self.validation_fraction, random_state=self.seed, stratify=stratify
        )
        return X_fit, y_fit, (X_val, y_val)

    def fit_stream(self, source: RowSource, *, val: RowSource | None = None) -> KerasHead:
        import_keras()
        from classifiers.keras_stream import StreamBatches

        columns = self._start_fit(source.labels, source.input_shape)
        if val is None and (self.early_stopping or self.reduce_lr):
            raise SettingError(f"{self.name}: early_stopping and reduce_lr watch the validation loss; pass validation rows")
        batches = StreamBatches(source, columns, self.batch_size, self.seed, shuffle=True)
        val_batches = None if val is None else StreamBatches(val, self._column(val.labels), PREDICT_BATCH, 0, False)
        rows = np.arange(len(columns))
        reads = (source.read(rows[i : i + PREDICT_BATCH]) for i in range(0, len(rows), PREDICT_BATCH))
        self._train(batches, columns, val_batches, channel_stats(reads) if self.standardize else None, streamed=True)
        return self

    def _train(self, x, columns, val, stats: tuple[np.ndarray, np.ndarray] | None, streamed: bool = False) -> None:
        import keras

        use_compile_cache()
        seed_everything(self.seed)
        mean, variance = stats if stats is not None else (None, None)
        model = self.build(len(self.classes_), mean, variance)
        optimizer = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
        model.compile(
            optimizer=optimizer[self.optimizer](learning_rate=self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=self._jit_compile(JIT_COMPILE),
            steps_per_execution=STEPS_PER_EXECUTION,
        )
        callbacks = []
        if self.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(patience=self.early_stopping, restore_best_weights=True))
        if self.reduce_lr:
            callbacks.append(keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=self.reduce_lr, min_lr=1e-6))
        history = model.fit(
            x,
            None if streamed else columns,
            batch_size=None if streamed else self.batch_size,
            epochs=self.epochs,
            validation_data=val,
            validation_batch_size=None if streamed else VAL_BATCH,
            class_weight=self._column_weights(columns),
            shuffle=True,
            callbacks=callbacks,
            verbose=self._keras_verbose(),
        )
        self.model_ = model
        self.history_ = {key: [float(v) for v in values] for key, values in history.history.items()}

    def _jit_compile(self, automatic: dict[str, bool], otherwise: bool | str = "auto") -> bool | str:
        """Keras's ``jit_compile`` for this head: under "auto", ``automatic``'s entry for the backend (``otherwise``
        for backends it does not name); else the setting.

        XLA pays for its compile (1-3 s a fit on 2 cores) over long runs; scikit-learn's model
        selection fits many small models, where turning it off is several times faster.
        """
        import keras

        if self.jit_compile == "auto":
            return automatic.get(keras.backend.backend(), otherwise)
        return bool(self.jit_compile)

    def _keras_verbose(self) -> int:
        """"auto": Keras's progress bar on a terminal, one line per epoch in a log."""
        if self.verbose == "auto":
            return 1 if sys.stdout.isatty() else 2
        return int(self.verbose)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted()
        X = self._validate_X(X)
        parts = [np.asarray(self.model_.predict_on_batch(X[i : i + PREDICT_BATCH])) for i in range(0, len(X), PREDICT_BATCH)]
        proba = np.concatenate(parts).astype(np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # float32 softmax sums drift from 1 by ~1e-7

    def to_keras(self) -> keras.Model:
        return self.model_

    def save(self, folder: Path) -> None:
        self._save_meta(folder)
        self.model_.save(folder / self.model_file)

    @classmethod
    def load(cls, folder: Path) -> KerasHead:
        keras = import_keras()
        use_compile_cache()
        head = cls._load_meta(folder)
        head.model_ = keras.saving.load_model(folder / cls.model_file)
        return head
