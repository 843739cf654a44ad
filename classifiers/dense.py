"""``dense``: the classic bottleneck-features recipe, Flatten -> Dense(256) -> Dropout -> softmax."""

from __future__ import annotations

import keras

from classifiers.keras_head import KerasHead


class DenseHead(KerasHead):
    name = "dense"

    def __init__(
        self,
        *,
        units: int = 256,
        dropout: float = 0.5,
        learning_rate: float = 2e-4,
        optimizer: str = "rmsprop",
        batch_size: int = 20,
        epochs: int = 20,
        early_stopping: int = 0,
        reduce_lr: int = 0,
        standardize: bool = True,
        seed: int = 0,
    ) -> None:
        """``early_stopping``/``reduce_lr``: patience in epochs on validation loss (0 = off);
        ``standardize``: per-channel standardisation of the features, fitted on the training rows."""
        self.units = units
        self.dropout = dropout
        self.learning_rate = learning_rate
        self.optimizer = optimizer
        self.batch_size = batch_size
        self.epochs = epochs
        self.early_stopping = early_stopping
        self.reduce_lr = reduce_lr
        self.standardize = standardize
        self.seed = seed

    def body(self, x, n_classes: int):
        x = keras.layers.Flatten()(x)
        x = keras.layers.Dense(self.units, activation="relu")(x)
        x = keras.layers.Dropout(self.dropout, seed=self.seed)(x)
        return keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
