"""What the Keras heads share: seeded deterministic training, callbacks, streaming, files.

A subclass only declares its settings and stacks its layers in ``body``. With
``standardize`` (the default) the model starts with a Normalization layer holding the
training features' per-channel mean and variance: codes from randomly initialised or
unusual backbones can be tiny and nearly constant, and the layer makes the learning
rate mean the same thing on any cache (logreg standardises for the same reason).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

import keras
import numpy as np

from classifiers.base import Head, RowSource, SettingError

OPTIMIZERS = ("rmsprop", "adam", "sgd")
PREDICT_BATCH = 1024
# XLA fuses the optimizer's element-wise update over Dense(256)'s 6.4M weights, the bulk of
# each step on a CPU; several steps per call remove Keras's per-step overhead, which dominates
# the tiny gap head. Measured on 1,400 rows of 7x7x512, 2 cores: dense 20 epochs 82 s -> 46 s,
# gap 30 epochs 13 s -> 9 s.
JIT_COMPILE = {"tensorflow": True}
STEPS_PER_EXECUTION = 32


def seed_everything(seed: int) -> None:
    """Same seed, same weights and shuffles.

    On a CPU, TensorFlow's kernels and XLA are deterministic already (checked: two runs,
    identical probabilities), so XLA stays on; on a GPU, TensorFlow's op determinism is
    switched on, which makes Keras train without XLA there.
    """
    keras.utils.set_random_seed(seed)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        if tf.config.list_physical_devices("GPU"):
            tf.config.experimental.enable_op_determinism()


class StreamBatches(keras.utils.PyDataset):
    """Batches read from a :class:`RowSource`, in a fresh seeded order each epoch when shuffling."""

    def __init__(self, source: RowSource, columns: np.ndarray, batch_size: int, seed: int, shuffle: bool) -> None:
        super().__init__(workers=1, use_multiprocessing=False)
        self.source, self.columns, self.batch_size, self.shuffle = source, columns, batch_size, shuffle
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(len(columns)) if shuffle else np.arange(len(columns))

    def __len__(self) -> int:
        return -(-len(self.columns) // self.batch_size)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rows = self.order[index * self.batch_size : (index + 1) * self.batch_size]
        return self.source.read(rows), self.columns[rows]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self.order = self.rng.permutation(len(self.columns))


def channel_stats(blocks: Iterable[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and variance over every row and grid cell, accumulated block by block."""
    total = squares = None
    count = 0
    for block in blocks:
        flat = block.reshape(-1, block.shape[-1]).astype(np.float64)
        total = flat.sum(axis=0) if total is None else total + flat.sum(axis=0)
        squares = (flat**2).sum(axis=0) if squares is None else squares + (flat**2).sum(axis=0)
        count += len(flat)
    mean = total / count
    return mean.astype(np.float32), np.maximum(squares / count - mean**2, 0).astype(np.float32)


class KerasHead(Head):
    """A small Keras model on the features, trained with sparse categorical cross-entropy."""

    model_file = "model.keras"

    def body(self, x, n_classes: int):
        """The head's layers from (standardised) features ``x`` to ``n_classes`` softmax probabilities."""
        raise NotImplementedError

    def build(self, n_classes: int, mean: np.ndarray, variance: np.ndarray) -> keras.Model:
        inputs = keras.Input(shape=self.input_shape_, name="features")
        x = keras.layers.Normalization(axis=-1, mean=mean, variance=variance)(inputs) if self.standardize else inputs
        return keras.Model(inputs, self.body(x, n_classes), name=f"{self.name}_head")

    def check_params(self) -> None:
        super().check_params()
        if self.optimizer not in OPTIMIZERS:
            raise SettingError(f"{self.name}: optimizer={self.optimizer!r} is unknown; use one of {', '.join(OPTIMIZERS)}")
        if self.batch_size < 1 or self.epochs < 1:
            raise SettingError(f"{self.name}: batch_size and epochs must be at least 1")
        if not 0 <= getattr(self, "dropout", 0.0) < 1:
            raise SettingError(f"{self.name}: dropout={self.dropout} must be in [0, 1)")

    def fit(self, X, y, *, X_val=None, y_val=None, class_weight=None) -> KerasHead:
        columns = self._start_fit(y, np.shape(X)[1:])
        X = self._check_input(X)
        val = None if X_val is None else (self._check_input(X_val), self._column(y_val))
        self._train(X, columns, val, class_weight, channel_stats([X]) if self.standardize else None)
        return self

    def fit_stream(self, source: RowSource, *, val: RowSource | None = None, class_weight=None) -> KerasHead:
        columns = self._start_fit(source.labels, source.input_shape)
        batches = StreamBatches(source, columns, self.batch_size, self.seed, shuffle=True)
        val_batches = None if val is None else StreamBatches(val, self._column(val.labels), PREDICT_BATCH, 0, False)
        rows = np.arange(len(columns))
        reads = (source.read(rows[i : i + PREDICT_BATCH]) for i in range(0, len(rows), PREDICT_BATCH))
        self._train(batches, None, val_batches, class_weight, channel_stats(reads) if self.standardize else None)
        return self

    def _train(self, x, y, val, class_weight, stats: tuple[np.ndarray, np.ndarray] | None) -> None:
        if val is None and (self.early_stopping or self.reduce_lr):
            raise SettingError(f"{self.name}: early_stopping and reduce_lr watch the validation loss; pass validation data")
        seed_everything(self.seed)
        mean, variance = stats if stats is not None else (None, None)
        model = self.build(len(self.classes_), mean, variance)
        optimizer = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam, "sgd": keras.optimizers.SGD}
        model.compile(
            optimizer=optimizer[self.optimizer](learning_rate=self.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=JIT_COMPILE.get(keras.backend.backend(), "auto"),
            steps_per_execution=STEPS_PER_EXECUTION,
        )
        callbacks = []
        if self.early_stopping:
            callbacks.append(keras.callbacks.EarlyStopping(patience=self.early_stopping, restore_best_weights=True))
        if self.reduce_lr:
            callbacks.append(keras.callbacks.ReduceLROnPlateau(factor=0.2, patience=self.reduce_lr, min_lr=1e-6))
        history = model.fit(
            x,
            y,
            batch_size=None if y is None else self.batch_size,
            epochs=self.epochs,
            validation_data=val,
            class_weight=self._column_weights(class_weight),
            shuffle=True,
            callbacks=callbacks,
            verbose=1 if sys.stderr.isatty() else 0,
        )
        self.model_ = model
        self.history_ = {key: [float(v) for v in values] for key, values in history.history.items()}

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        X = self._check_input(X)
        parts = [np.asarray(self.model_.predict_on_batch(X[i : i + PREDICT_BATCH])) for i in range(0, len(X), PREDICT_BATCH)]
        if not parts:
            return np.empty((0, len(self.classes_)))
        proba = np.concatenate(parts).astype(np.float64)
        return proba / proba.sum(axis=1, keepdims=True)  # float32 softmax sums drift from 1 by ~1e-7

    def to_keras(self) -> keras.Model:
        return self.model_

    def save(self, folder: Path) -> None:
        self._save_meta(folder)
        self.model_.save(folder / self.model_file)

    @classmethod
    def load(cls, folder: Path) -> KerasHead:
        head = cls._load_meta(folder)
        head.model_ = keras.saving.load_model(folder / cls.model_file)
        return head
