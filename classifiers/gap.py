"""``gap``: GlobalAveragePooling2D -> Dense softmax; a few thousand weights, trains in seconds."""

from __future__ import annotations

import keras

from classifiers.keras_head import KerasHead


class GapHead(KerasHead):
    name = "gap"

    def __init__(
        self,
        *,
        dropout: float = 0.0,
        learning_rate: float = 1e-3,
        optimizer: str = "adam",
        batch_size: int = 32,
        epochs: int = 30,
        early_stopping: int = 0,
        reduce_lr: int = 0,
        standardize: bool = True,
        seed: int = 0,
    ) -> None:
        """``early_stopping``/``reduce_lr``: patience in epochs on validation loss (0 = off);
        ``standardize``: per-channel standardisation of the features, fitted on the training rows."""
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
        x = keras.layers.GlobalAveragePooling2D()(x)
        if self.dropout:
            x = keras.layers.Dropout(self.dropout, seed=self.seed)(x)
        return keras.layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
